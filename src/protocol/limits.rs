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
/// Largest barrage datagram the server ever sends: the smallest `max_datagram_size()` quinn
/// offers at the 1200-byte initial MTU is a little above this, so every barrage fits on any path.
pub const MAX_DATAGRAM_BUDGET: usize = 1150;
/// Largest frame body a client may send on its control stream. A login with a maximal token
/// and a custom command to the maximum number of targets both fit with room to spare.
pub const MAX_REQUEST_FRAME: usize = 16 * 1024;
/// Largest frame body the server sends (control stream or room lane). A batch of
/// [`MAX_BATCH`] maximal broadcasts and a user update of [`MAX_USERS_PER_UPDATE`] maximal
/// members both fit.
pub const MAX_SERVER_FRAME: usize = 128 * 1024;

/// Punctuation allowed in room and user IDs besides ASCII letters and digits.
pub const ID_PUNCTUATION: &str = "~!@#$%^&*()_+=-;',.<>|";

/// Checks a room ID: 1 to [`MAX_ROOM_ID`] bytes of ASCII letters, digits and [`ID_PUNCTUATION`].
pub fn check_room_id(room: &str) -> Result<(), ErrorCode> {
    check_id(room, MAX_ROOM_ID).map_err(|_| ErrorCode::INVALID_ROOM_ID)
}

/// Checks a user ID: 1 to [`MAX_USER_ID`] bytes of ASCII letters, digits and [`ID_PUNCTUATION`].
pub fn check_user_id(user: &str) -> Result<(), ErrorCode> {
    check_id(user, MAX_USER_ID).map_err(|_| ErrorCode::INVALID_USER_ID)
}

/// Checks a user name: 1 to [`MAX_USER_NAME`] bytes of UTF-8 without control characters.
pub fn check_user_name(name: &str) -> Result<(), ErrorCode> {
    if name.is_empty() || name.len() > MAX_USER_NAME || name.chars().any(char::is_control) {
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
    fn payload_rule() {
        assert_eq!(check_payload(&[]), Err(ErrorCode::PAYLOAD_EMPTY));
        assert!(check_payload(&[0; 1]).is_ok());
        assert!(check_payload(&[0; MAX_PAYLOAD]).is_ok());
        assert_eq!(check_payload(&[0; MAX_PAYLOAD + 1]), Err(ErrorCode::PAYLOAD_TOO_LARGE));
    }
}
