#!/usr/bin/env bash
# Runs every fuzz target (gossip/fuzz: the sketch path's decoders, merges, spool and membership
# screening; proxy/fuzz: the direct path's response reading) for a bounded time, starting from
# its committed corpus, and fails on the first crash (a panic or failed assertion) or on an input
# that runs over 10 s.
#
# The normal test suite already replays each corpus; this adds a short search for new inputs.
# It needs no nightly toolchain: cargo-fuzz is installed when missing, the targets build on
# stable with RUSTC_BOOTSTRAP and without sanitizers (the targets' own assertions and Rust's
# checks are what fail). New inputs go to a scratch directory, never into the committed corpus;
# a crash is written to FUZZ_DIR/artifacts/TARGET/ and printed.
#   scripts/fuzz-smoke.sh                 every target, FUZZ_SECONDS (default 15) each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh gossip   a longer run of one crate's targets
set -euo pipefail
seconds="${FUZZ_SECONDS:-15}"
root="$(cd "$(dirname "$0")/.." && pwd)"
crates=("$@")
[ ${#crates[@]} -eq 0 ] && crates=(gossip proxy)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
fuzz_flags=(--sanitizer none -O)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for crate in "${crates[@]}"; do
  dir="$root/$crate"
  if [ ! -f "$dir/fuzz/Cargo.toml" ]; then
    echo "fuzz-smoke: $crate has no fuzz/Cargo.toml" >&2
    exit 2
  fi
  (cd "$dir" && cargo fuzz build "${fuzz_flags[@]}")
  for target in $(cd "$dir" && cargo fuzz list); do
    corpus="$dir/fuzz/corpus/$target"
    if [ ! -d "$corpus" ]; then
      echo "fuzz-smoke: $crate target $target has no corpus at $corpus" >&2
      exit 2
    fi
    found="$scratch/$crate-$target"
    mkdir -p "$found"
    echo "fuzz-smoke: $crate/$target for ${seconds}s" >&2
    # The first directory receives new inputs; the committed corpus is only read.
    (cd "$dir" && cargo fuzz run "${fuzz_flags[@]}" "$target" "$found" "$corpus" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      2> "$scratch/$crate-$target.log") || {
      tail -n 60 "$scratch/$crate-$target.log" >&2
      echo "fuzz-smoke: $crate/$target FAILED; the input is under $dir/fuzz/artifacts/$target/" >&2
      exit 1
    }
    grep -E '^stat::number_of_executed_units' "$scratch/$crate-$target.log" |
      sed "s/^/fuzz-smoke: $crate\/$target /" >&2 || true
  done
done
