# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install when needed.
PYTHON ?= python3
# The CPU wheel; on a CUDA machine set e.g. TORCH="torch==2.13.0 --index-url <your CUDA index>" or TORCH=torch.
TORCH ?= torch==2.13.0
VENV  := .venv
BIN   := $(VENV)/bin
PIP   := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN   ?= runs/moons
DEMO  ?= runs/demo

.PHONY: demo demo2d test test-fast bench install clean fonts browser peers clip base

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test,bench,text,emoji,lora,ui]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)  # the demo is rebuilt from scratch each time
	$(BIN)/denoisekit train configs/digits-demo.yaml --out $(DEMO)
	$(BIN)/denoisekit sample $(DEMO) --label all --n 100 --out $(DEMO)/samples.png
	$(BIN)/denoisekit sample $(DEMO) --label all --n 1000 --out $(DEMO)/samples.npz
	$(BIN)/denoisekit eval $(DEMO)/samples.npz --ref digits --json $(DEMO)/metrics.json
	$(BIN)/denoisekit report $(DEMO)
	@echo "demo outputs: $(DEMO)/samples.png, $(DEMO)/loss.png, $(DEMO)/metrics.json, $(DEMO)/report.md"

demo2d: $(STAMP)
	$(BIN)/denoisekit train2d --data moons --process ddpm --prediction eps --steps 3000 --out $(RUN)
	$(BIN)/denoisekit sample2d $(RUN) --sampler dpmpp_2m --nfe 10 --n 2000 --out $(RUN)/samples.png \
		--gif $(RUN)/trajectory.gif
	@echo "2-D demo outputs: $(RUN)/samples.png, $(RUN)/trajectory.gif, $(RUN)/samples.json, $(RUN)/loss.csv"

# JOBS=auto (or N): pytest-xdist, one worker per core (the tests are single-threaded), each test module kept on one
# worker; 1.9x faster on 2 cores, but two tests are flaky there under load (a 2-process gloo run, a browser wait),
# so the default stays one process (JOBS=0).
JOBS ?= 0
test: $(STAMP) fonts browser
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

# The tests that train no network (under a minute on 2 cores); `make test` runs these and the slow ones.
test-fast: $(STAMP) fonts
	$(BIN)/python -m pytest -m "not slow"

# The emoji dataset's font (Debian's fonts-noto-color-emoji); needs root, else its tests skip with a hint.
fonts:
	@dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q fonts-noto-color-emoji || (apt-get update -q && apt-get install -y -q fonts-noto-color-emoji)) \
		|| echo "note: fonts-noto-color-emoji not installed (sudo apt-get install fonts-noto-color-emoji): emoji tests skip"; }

# The UI's browser tests drive Debian's chromium through Playwright (never a browser download); needs root,
# else those tests skip with a hint.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) \
		|| echo "note: chromium not installed (sudo apt-get install chromium): the UI's browser tests skip"; }

# The project's CLIP (denoisekit.eval.clip: CLIP score, R-precision) and its noise-aware twin (CLIP guidance),
# trained once into the cache (measured: 7 + 11 minutes wall on a shared 2-core machine under load 7-9, one
# training thread each); the metrics build a missing one on first use.
clip: $(STAMP) fonts
	$(BIN)/denoisekit clip
	$(BIN)/denoisekit clip --noisy

# The base text-to-image model for adaptation (configs/base-shapes-text.yaml: 32x32 shapes with captions, MiniLM
# cross-attention; about 20 CPU-minutes on 2 cores), trained once: a finished run is reused, an interrupted one
# resumed exactly from its latest checkpoint (rm -rf $(BASE) to train it again). docs/tutorials/adaptation.md.
BASE ?= runs/base-shapes-text
base: $(STAMP)
	@if $(BIN)/python -c "import sys, yaml; from denoisekit.engine.checkpoint import list_checkpoints; \
		done = list_checkpoints('$(BASE)/checkpoints'); \
		sys.exit(not done or done[-1][0] < yaml.safe_load(open('$(BASE)/config.yaml'))['train']['steps'])" \
		2>/dev/null; then echo "$(BASE) is trained: reusing it (rm -rf $(BASE) to train it again)"; \
	else $(BIN)/denoisekit train configs/base-shapes-text.yaml --out $(BASE) --resume; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/samplers.py

# The peer library that needs torchvision, in its own environment (benchmarks/quality.py runs it there).
PEERS := .venv-peers
peers: $(PEERS)/bin/python
$(PEERS)/bin/python:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 denoising-diffusion-pytorch==2.3.4

clean:
	rm -rf $(VENV) runs .pytest_cache
