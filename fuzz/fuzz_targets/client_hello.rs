//! Any bytes: the ClientHello parser answers, never panics or reads past
//! its input.
#![no_main]

use baton::proxy::sni::server_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(name)) = server_name(data) {
        assert!(!name.is_empty());
    }
});
