#!/usr/bin/env bash
# Regenerates the committed seed corpus fuzz/corpus/<target>/ with the public API of
# ferry-format (examples/make_corpus.rs) plus the golden vectors of testdata/vectors.
# Seeds only: run after a wire-format change, then commit the result.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf corpus
cargo run --quiet --release --example make_corpus
du -sh corpus
