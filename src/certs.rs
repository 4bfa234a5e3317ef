//! The development PKI: a CA, a server certificate for localhost and a token-signing secret,
//! created under `certs/` on first start and reused after.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Names the development server certificate is valid for.
pub const DEV_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The files of a certificate directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// CA certificate clients trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// CA private key (`ca.key`), used only to sign the server certificate.
    pub ca_key: PathBuf,
    /// Server certificate chain (`server.pem`).
    pub server_cert: PathBuf,
    /// Server private key (`server.key`).
    pub server_key: PathBuf,
    /// Token-signing secret, hex (`token.secret`).
    pub token_secret: PathBuf,
}

impl CertPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            token_secret: dir.join("token.secret"),
        }
    }
}

/// A freshly generated development CA and a server certificate it signed, in PEM.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate.
    pub ca_cert_pem: String,
    /// The CA private key.
    pub ca_key_pem: String,
    /// The server certificate (valid for [`DEV_SERVER_NAMES`]).
    pub server_cert_pem: String,
    /// The server private key.
    pub server_key_pem: String,
}

impl DevPki {
    /// Generates a new CA and server certificate in memory.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "qrelay development CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let names: Vec<String> = DEV_SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        let mut server_params = CertificateParams::new(names)?;
        server_params.distinguished_name.push(DnType::CommonName, "qrelay development server");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;
        Ok(Self {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// Writes the four PEM files (keys readable by the owner only).
    pub fn write(&self, paths: &CertPaths) -> std::io::Result<()> {
        if let Some(dir) = paths.ca_cert.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&paths.ca_cert, &self.ca_cert_pem)?;
        write_private(&paths.ca_key, self.ca_key_pem.as_bytes())?;
        std::fs::write(&paths.server_cert, &self.server_cert_pem)?;
        write_private(&paths.server_key, self.server_key_pem.as_bytes())?;
        Ok(())
    }

    /// The server certificate chain and key, parsed for rustls.
    pub fn server_identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rustls::pki_types::pem::Error>
    {
        let chain = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())?;
        Ok((chain, key))
    }

    /// The CA certificate, parsed for rustls.
    pub fn ca(&self) -> Result<CertificateDer<'static>, rustls::pki_types::pem::Error> {
        CertificateDer::from_pem_slice(self.ca_cert_pem.as_bytes())
    }
}

/// Writes a file that only its owner can read (mode 0600 on Unix).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM certificate in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use anyhow::Context;
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a PEM private key from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_parses() {
        let pki = DevPki::generate().unwrap();
        let (chain, _key) = pki.server_identity().unwrap();
        assert_eq!(chain.len(), 1);
        pki.ca().unwrap();
    }
}
