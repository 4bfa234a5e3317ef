//! Size and count limits of the wire protocol, and the validation of IDs and payloads.

use super::ErrorCode;

/// Largest payload of a broadcast, barrage or custom command, in bytes (the SDKs' 1 KiB rule).
pub const MAX_PAYLOAD: usize = 1024;
/// Longest room ID, in bytes.
pub const MAX_ROOM_ID: usize = 128;
/// Longest user ID, in bytes.
pub const MAX_USER_ID: usize = 64;
/// Longest user name, in bytes of UTF-8.
pub const MAX_USER_NAME: usize = 256;
/// Longest token accepted in a login or renewal, in bytes.
pub const MAX_TOKEN: usize = 4096;
/// Most target users in one custom command.
pub const MAX_COMMAND_TARGETS: usize = 100;
/// Most messages in one broadcast batch on a room lane (the SDKs deliver lists of up to 50).
pub const MAX_BATCH: usize = 50;
/// Most members listed in one user-update event on a room lane.
pub const MAX_USERS_PER_UPDATE: usize = 200;
/// Most members in one page of a room's member list (a large room's first page at login, or
/// a `FetchMembers` reply): as many as a user update holds, so a maximal page fits a frame.
pub const MAX_MEMBER_PAGE: usize = MAX_USERS_PER_UPDATE;
/// Largest barrage datagram the server ever sends: the smallest `max_datagram_size()` quinn
/// offers at the 1200-byte initial MTU is a little above this, so every barrage fits on any path.
pub const MAX_DATAGRAM_BUDGET: usize = 1150;
/// Largest frame body a client may send on its control stream. A login with a maximal token
/// and a custom command to the maximum number of targets both fit with room to spare.
pub const MAX_REQUEST_FRAME: usize = 16 * 1024;
/// Largest frame body the server sends (control stream or room lane). A batch of
/// [`MAX_BATCH`] maximal broadcasts, a user update of [`MAX_USERS_PER_UPDATE`] maximal
/// members and a member page of [`MAX_MEMBER_PAGE`] all fit.
pub const MAX_SERVER_FRAME: usize = 128 * 1024;

/// The user ID of the server API's default sender: no client may log in as it, so a message
/// from the system always reaches every member.
pub const SYSTEM_USER_ID: &str = "system";

/// The display name of the server API's default sender.
pub const SYSTEM_USER_NAME: &str = "System";

/// The session number that barrage datagrams from the server API name as their sender: no
/// connection has it (sessions start at 1), and receivers show it as the system sender
/// ([`SYSTEM_USER_ID`], [`SYSTEM_USER_NAME`]).
pub const SYSTEM_SESSION: u32 = 0;

/// Punctuation allowed in room and user IDs besides ASCII letters and digits.
pub const ID_PUNCTUATION: &str = "~!@#$%^&*()_+=-;',.<>|";

/// Characters a user name may not hold besides controls (Unicode Cc): every format character
/// (general category Cf, Unicode 15.1) and the line and paragraph separators (Zl, Zp). They
/// are invisible, or change how the text around them is shown: after a right-to-left override
/// (U+202E) "nimda" shows as "admin", and a zero-width space makes two names that look the same
/// differ. Inclusive ranges, in code point order.
pub const NAME_FORBIDDEN_RANGES: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark (bidi)
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound and piastre marks above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, non-joiner, joiner; LRM, RLM (bidi)
    ('\u{2028}', '\u{2029}'),   // line and paragraph separators
    ('\u{202A}', '\u{202E}'),   // bidi embeddings and overrides
    ('\u{2060}', '\u{2064}'),   // word joiner, invisible operators
    ('\u{2066}', '\u{2069}'),   // bidi isolates
    ('\u{206A}', '\u{206F}'),   // deprecated format characters
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (byte order mark)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol format controls
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tags (invisible ASCII)
];

/// Checks a room ID: 1 to [`MAX_ROOM_ID`] bytes of ASCII letters, digits and [`ID_PUNCTUATION`].
pub fn check_room_id(room: &str) -> Result<(), ErrorCode> {
    check_id(room, MAX_ROOM_ID).map_err(|_| ErrorCode::INVALID_ROOM_ID)
}

/// Checks a user ID: 1 to [`MAX_USER_ID`] bytes of ASCII letters, digits and [`ID_PUNCTUATION`].
pub fn check_user_id(user: &str) -> Result<(), ErrorCode> {
    check_id(user, MAX_USER_ID).map_err(|_| ErrorCode::INVALID_USER_ID)
}

/// Checks a user name: 1 to [`MAX_USER_NAME`] bytes of UTF-8 without control characters
/// (Unicode Cc) or any of [`NAME_FORBIDDEN_RANGES`].
pub fn check_user_name(name: &str) -> Result<(), ErrorCode> {
    if name.is_empty() || name.len() > MAX_USER_NAME || name.chars().any(forbidden_in_name) {
        return Err(ErrorCode::INVALID_USER_NAME);
    }
    Ok(())
}

/// Checks a message payload: 1 to [`MAX_PAYLOAD`] bytes.
pub fn check_payload(payload: &[u8]) -> Result<(), ErrorCode> {
    match payload.len() {
        0 => Err(ErrorCode::PAYLOAD_EMPTY),
        n if n > MAX_PAYLOAD => Err(ErrorCode::PAYLOAD_TOO_LARGE),
        _ => Ok(()),
    }
}

fn forbidden_in_name(c: char) -> bool {
    c.is_control() || NAME_FORBIDDEN_RANGES.iter().any(|&(first, last)| (first..=last).contains(&c))
}

fn check_id(id: &str, max: usize) -> Result<(), ()> {
    let ok = !id.is_empty()
        && id.len() <= max
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || ID_PUNCTUATION.as_bytes().contains(&b));
    if ok { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_rule() {
        assert!(check_room_id("lobby-1_a.b~!#$%&*+=|").is_ok());
        assert!(check_room_id(&"r".repeat(MAX_ROOM_ID)).is_ok());
        assert_eq!(check_room_id(""), Err(ErrorCode::INVALID_ROOM_ID));
        assert_eq!(check_room_id(&"r".repeat(MAX_ROOM_ID + 1)), Err(ErrorCode::INVALID_ROOM_ID));
        for bad in ["with space", "slash/", "back\\slash", "quote\"", "tab\t", "é", "`"] {
            assert_eq!(check_room_id(bad), Err(ErrorCode::INVALID_ROOM_ID), "{bad:?}");
        }
    }

    #[test]
    fn user_id_rule() {
        assert!(check_user_id("alice@example.com").is_ok());
        assert!(check_user_id(&"u".repeat(MAX_USER_ID)).is_ok());
        assert_eq!(check_user_id(&"u".repeat(MAX_USER_ID + 1)), Err(ErrorCode::INVALID_USER_ID));
        assert_eq!(check_user_id(""), Err(ErrorCode::INVALID_USER_ID));
        assert_eq!(check_user_id("a b"), Err(ErrorCode::INVALID_USER_ID));
    }

    #[test]
    fn user_name_rule() {
        assert!(check_user_name("Alice Ünïcode 名前").is_ok());
        assert!(check_user_name(&"n".repeat(MAX_USER_NAME)).is_ok());
        assert_eq!(
            check_user_name(&"n".repeat(MAX_USER_NAME + 1)),
            Err(ErrorCode::INVALID_USER_NAME)
        );
        assert_eq!(check_user_name(""), Err(ErrorCode::INVALID_USER_NAME));
        assert_eq!(check_user_name("line\nbreak"), Err(ErrorCode::INVALID_USER_NAME));
    }

    #[test]
    fn user_names_refuse_bidi_zero_width_and_other_invisible_characters() {
        let refused = [
            '\u{0000}',
            '\u{001F}',
            '\u{007F}',
            '\u{0085}',
            '\u{009F}', // controls (Cc)
            '\u{061C}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}', // bidi
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}', // zero-width
            '\u{00AD}',
            '\u{2028}',
            '\u{2029}',
            '\u{2064}',
            '\u{206F}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{1D173}',
        ];
        for c in refused {
            for name in
                [format!("{c}"), format!("Alice {c}"), format!("{c}Alice"), format!("A{c}B")]
            {
                assert_eq!(
                    check_user_name(&name),
                    Err(ErrorCode::INVALID_USER_NAME),
                    "U+{:04X} in {name:?}",
                    c as u32
                );
            }
        }
        // "Alice (admin" on screen, "Alice (nimda" in the bytes.
        assert_eq!(check_user_name("Alice (\u{202E}nimda"), Err(ErrorCode::INVALID_USER_NAME));
        // Neighbours of the ranges, and the marks and selectors real names and emoji use.
        for allowed in [
            "\u{00AC}\u{00AE}",
            "\u{2027}",
            "\u{2030}",
            "\u{2065}",
            "\u{FEFE}",
            "\u{E0000}",
            "\u{E0080}",
            "שלום",
            "مرحبا",
            "é (e\u{0301})",
            "❤\u{FE0F}",
            "\u{1F44D}\u{1F3FD}",
            "\u{00A0}nbsp",
            "名前 ",
        ] {
            assert!(check_user_name(allowed).is_ok(), "{allowed:?}");
        }
    }

    #[test]
    fn name_forbidden_ranges_are_ordered_and_disjoint() {
        for pair in NAME_FORBIDDEN_RANGES.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn payload_rule() {
        assert_eq!(check_payload(&[]), Err(ErrorCode::PAYLOAD_EMPTY));
        assert!(check_payload(&[0; 1]).is_ok());
        assert!(check_payload(&[0; MAX_PAYLOAD]).is_ok());
        assert_eq!(check_payload(&[0; MAX_PAYLOAD + 1]), Err(ErrorCode::PAYLOAD_TOO_LARGE));
    }
}
