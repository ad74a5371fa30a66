//! Every committed input of the fuzz targets that need no root, replayed: the seed corpus and
//! each input a fuzzer ever failed on (`fuzz/regressions/<target>/`, one file per failure,
//! named for what it found). The kernel target's inputs are replayed by the privileged
//! `datapath_test_run` test.

use std::path::{Path, PathBuf};

use super::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_holds_its_properties() {
    for (name, check) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "{name}: no seed corpus");
        for file in corpus
            .iter()
            .chain(&inputs(&fuzz_dir().join("regressions").join(name)))
        {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

#[test]
fn the_stream_masker_property_sees_a_cut_card() {
    // A JSON body of 3 KiB with a card at the hold-back's edge, cut every 7 bytes: the masker
    // must mask it fed whole and fed in pieces alike.
    let mut body = format!(
        "{{\"pad\":\"{}\",\"card\":\"4111 1111 1111 1111\"}}",
        "x".repeat(3000)
    );
    body.push_str(&" ".repeat(2000));
    let mut input = vec![0u8, 1, 6];
    input.extend_from_slice(body.as_bytes());
    super::dlp::dlp_stream(&input);
    input[0] = 1;
    super::dlp::dlp_stream(&input);
}
