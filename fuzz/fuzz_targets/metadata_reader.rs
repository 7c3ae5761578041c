//! Feeds arbitrary bytes to the metadata reader: it must return an error or metadata, never
//! panic, hang or allocate without bound. Whatever it accepts must survive a re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_storage::{decode_metadata, encode_metadata};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_metadata(data) {
        let again = decode_metadata(&encode_metadata(&m)).expect("re-encoded metadata decodes");
        assert_eq!(again, m);
    }
});
