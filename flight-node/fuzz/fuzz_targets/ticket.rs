//! `Ticket::decode` on arbitrary bytes, without and with a signing key.
//!
//! Input: `mode:u8 bytes`. Properties: decoding never panics; every refusal is
//! INVALID_ARGUMENT; an accepted ticket names DNS-1123 labels and a positive version, and
//! its encoding (signed and unsigned) decodes to the same ticket; a signed ticket with any
//! byte changed is refused; a key-less node refuses signed tickets and a keyed node
//! unsigned ones.
#![no_main]

use flight_node::ticket::{Ticket, TicketSigner, MAX_TICKET_LEN};
use flight_node_fuzz::labels::is_dns1123_label;
use libfuzzer_sys::fuzz_target;

fn signer() -> TicketSigner {
    TicketSigner::new(b"fuzzing-key-0123456789".to_vec()).expect("a 22-byte key")
}

fn check_accepted(t: &Ticket, s: &TicketSigner) {
    assert!(is_dns1123_label(t.dataset.namespace()), "{t:?}");
    assert!(is_dns1123_label(t.dataset.name()), "{t:?}");
    assert!(t.version > 0, "{t:?}");
    let plain = t.encode(None);
    let signed = t.encode(Some(s));
    assert!(signed.len() <= MAX_TICKET_LEN, "{signed}");
    assert_eq!(
        Ticket::decode(plain.as_bytes(), None).ok().as_ref(),
        Some(t)
    );
    assert_eq!(
        Ticket::decode(signed.as_bytes(), Some(s)).ok().as_ref(),
        Some(t)
    );
    assert!(Ticket::decode(plain.as_bytes(), Some(s)).is_err());
    assert!(Ticket::decode(signed.as_bytes(), None).is_err());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let s = signer();
    let key = (mode & 1 == 1).then_some(&s);
    match Ticket::decode(bytes, key) {
        Ok(t) => check_accepted(&t, &s),
        Err(e) => assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}"),
    }
    // A signature the fuzzer cannot forge: sign what decodes unsigned, then damage one
    // byte (position and bits from the mode byte and the input) and expect a refusal.
    if let Ok(t) = Ticket::decode(bytes, None) {
        check_accepted(&t, &s);
        let mut signed = t.encode(Some(&s)).into_bytes();
        let at = usize::from(mode) * 7 % signed.len();
        let flip = bytes.last().copied().unwrap_or(1) | 1;
        signed[at] ^= flip;
        if let Ok(back) = Ticket::decode(&signed, Some(&s)) {
            panic!(
                "a damaged signed ticket {:?} was accepted as {back:?}",
                String::from_utf8_lossy(&signed)
            );
        }
    }
});
