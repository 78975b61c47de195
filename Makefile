# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.uav-installed

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

# The native plugin's signature is generated from vs_uav/settings.py at build time: a change
# there (or in native/) reinstalls, which rebuilds the plugin.
$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh vs_uav/settings.py $(wildcard native/*)
	VENV=$(VENV) bash scripts/bootstrap.sh
	touch $@

# The main job on the tiny reference model (no weights can be downloaded here).
demo: setup
	$(PY) -m vs_uav demo

# The whole suite, slow end-to-end tests included (what CI runs). Two pytest-xdist workers:
# most tests wait on vspipe, ffmpeg or Ray, so two share the two cores of a small machine well;
# a test file stays on one worker (--dist loadfile), so its module fixtures are made once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
