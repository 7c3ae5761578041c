//! Feeds arbitrary bytes to the snapshot reader: it must return an error or a snapshot, never
//! panic, hang or allocate without bound. Then cuts the input into sections, writes them as a
//! snapshot and checks that they read back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_storage::{encode_snapshot, Snapshot, SnapshotHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::from_bytes(data.to_vec()) {
        let names: Vec<String> = s.section_names().map(str::to_owned).collect();
        for n in &names {
            let _ = s.section(n);
        }
        let _ = s.sections();
        let _ = s.verify();
    }

    // Round trip: sections `s<i>` cut from the input at its 0xff bytes.
    let parts: Vec<(String, &[u8])> = data
        .split(|b| *b == 0xff)
        .take(64)
        .enumerate()
        .map(|(i, p)| (format!("s{i}"), p))
        .collect();
    let sections: Vec<(&str, &[u8])> = parts.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let header = SnapshotHeader {
        checkpoint_id: data.len() as u64,
        worker: 7,
    };
    let bytes = encode_snapshot(&header, &sections).expect("valid sections encode");
    let s = Snapshot::from_bytes(bytes).expect("an encoded snapshot reads back");
    assert_eq!(s.header(), &header);
    for (n, p) in &sections {
        assert_eq!(s.section(n).expect("checksum"), Some(*p));
    }
});
