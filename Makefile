# The two entry points of the README: `make demo` and `make test`.
# Each creates its own virtual environment (.venv) and installs what it needs.
# constraints.txt pins torch to the CPU build that these machines provide.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.layoutconv-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/layoutconv demo

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m pytest -q -rs

# the reference pass against the frameworks (one convolution, then whole models), then the command line's latency (import, verify, inspect)
bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench_reference.py
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench_model.py
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench_cli.py
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) benchmarks/bench_convert.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
