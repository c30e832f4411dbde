//! Every committed fuzz input (`fuzz/regressions/TARGET/*`, crashers found so far) and the
//! fuzzers' seeds, replayed through the fuzz targets' bodies: a fixed bug stays fixed.

use std::path::Path;

use chorus_core::fuzz;

fn target(name: &str) -> fn(&[u8]) {
    match name {
        "event_decode" => fuzz::event_decode,
        "wire_request" => fuzz::wire_request,
        "sync_receiver" => fuzz::sync_receiver,
        "archive_read" => fuzz::archive_read,
        other => panic!("fuzz/regressions/{other}: no such target"),
    }
}

#[test]
fn committed_fuzz_inputs_pass_their_targets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut n = 0;
    for t in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let t = t.unwrap();
        let run = target(t.file_name().to_str().unwrap());
        for f in std::fs::read_dir(t.path()).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().is_some_and(|n| n == ".gitkeep") {
                continue;
            }
            run(&std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    eprintln!("{n} committed inputs replayed");
}

#[test]
fn the_seeds_are_valid_inputs_of_their_targets() {
    let seeds = fuzz::seeds();
    assert!(seeds.len() >= 9);
    for (t, data) in seeds {
        target(t)(&data);
    }
    // The checks can fail: a flipped byte in a valid block is refused, not accepted.
    let (_, mut block) = fuzz::seeds().remove(0);
    let last = block.len() - 1;
    block[last] ^= 1;
    assert!(chorus_core::SignedEvent::decode(&block).is_err());
}
