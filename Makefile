# The two commands: `make up` runs the embedded default, `make test` runs the test suite.
# Both install what a fresh machine lacks before running cargo: cmake (pingora's zlib-ng), and for
# the tests Chromium, Prometheus, systemd-analyze and g++ (scripts/ensure-deps.sh).

.PHONY: up test deps test-deps bench

deps:
	@scripts/ensure-deps.sh

test-deps:
	@scripts/ensure-deps.sh --test

up: deps
	cargo run --release -- up

# The suite, then every fuzz target for a few seconds from its corpus (scripts/fuzz-smoke.sh).
# A clean build gains nothing from incremental state, which would add gigabytes to target/.
test: test-deps
	CARGO_INCREMENTAL=$${CARGO_INCREMENTAL:-0} cargo test --workspace --lib --bins --tests --no-fail-fast
	scripts/fuzz-smoke.sh
