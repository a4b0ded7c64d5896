# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
.PHONY: demo demo-down test unit envtest e2e runtime kubelet lint crds lock bench

# UPGRADE=1: run against the newest release of every dependency instead of the lock
# (a scheduled check of what the next `make lock` would break; not part of CI).
export KAITO_UPGRADE := $(UPGRADE)

demo:
	bash hack/demo.sh

demo-down:
	bash hack/demo.sh down

test:
	bash hack/test.sh $(ARGS)

unit:
	bash hack/test.sh -m unit $(ARGS)

envtest:
	bash hack/test.sh -m envtest $(ARGS)

e2e:
	bash hack/test.sh -m e2e $(ARGS)

runtime:
	bash hack/test.sh -m runtime $(ARGS)

kubelet:
	bash hack/test.sh -m kubelet $(ARGS)

lint:
	V=$$(bash hack/venv.sh) && $$V/bin/ruff check . && $$V/bin/mypy kaito crds presets webhook controller runtime

crds:
	V=$$(bash hack/venv.sh) && $$V/bin/kaito crds --write

# Refresh requirements/*.txt (exact versions and hashes); commit the result.
lock:
	bash hack/lock.sh

# Benchmarks (not part of CI's pass/fail): one table, each figure a ratio against a
# reference measured in the same run; writes benchmarks/results/<date>.json. QUICK=1:
# small sizes (under 3 minutes). The first run compiles llama.cpp (benchmarks/venv.sh).
bench:
	KAITO_BENCH_QUICK=$(QUICK) bash benchmarks/bench.sh $(ARGS)
