//! The development PKI: a CA, a server certificate for localhost and a token-signing secret,
//! created under `certs/` on first start and reused after. The CA's key signs the server
//! certificate and is then forgotten: no file lets anyone issue more certificates that clients
//! trusting `ca.pem` accept.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Names the development server certificate is valid for.
pub const DEV_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The CA key file that earlier versions kept in the certificate directory; no longer written,
/// and `qrelay serve` warns while one is there.
pub const OLD_CA_KEY: &str = "ca.key";

/// Mode bits that let anyone but the owner read, write or run a file: a private file (key or
/// secret) with any of them set is exposed.
#[cfg(unix)]
const GROUP_AND_OTHER_BITS: u32 = 0o077;

/// The files of a certificate directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// CA certificate clients trust (`ca.pem`).
    pub ca_cert: PathBuf,
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
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            token_secret: dir.join("token.secret"),
        }
    }
}

/// A freshly generated development CA and a server certificate it signed, in PEM. The CA's
/// private key is not kept.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate.
    pub ca_cert_pem: String,
    /// The server certificate (valid for [`DEV_SERVER_NAMES`]).
    pub server_cert_pem: String,
    /// The server private key.
    pub server_key_pem: String,
}

impl DevPki {
    /// Generates a new CA and a server certificate signed by it, in memory; the CA's key is
    /// dropped once it has signed.
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
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// Writes the three PEM files (the key readable by the owner only).
    pub fn write(&self, paths: &CertPaths) -> std::io::Result<()> {
        if let Some(dir) = paths.ca_cert.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&paths.ca_cert, &self.ca_cert_pem)?;
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

/// Writes a file that only its owner can read (mode 0600 on Unix), whatever the mode of a file
/// already there: the mode is set before the contents are written.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Applies only to a file this call creates.
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)
}

/// The Unix mode of a private file (key or secret) when group or others may access it; `None`
/// when only its owner may, and always on systems without Unix modes.
pub fn exposed_mode(path: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & GROUP_AND_OTHER_BITS != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| None)
    }
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

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_even_when_they_existed_with_a_looser_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(exposed_mode(&path).unwrap(), Some(0o644));
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(exposed_mode(&path).unwrap(), None);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let fresh = dir.path().join("token.secret");
        write_private(&fresh, b"s").unwrap();
        assert_eq!(exposed_mode(&fresh).unwrap(), None);
    }

    #[test]
    fn generated_pki_parses() {
        let pki = DevPki::generate().unwrap();
        let (chain, _key) = pki.server_identity().unwrap();
        assert_eq!(chain.len(), 1);
        pki.ca().unwrap();
    }
}
