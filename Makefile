# regpose: `make demo` and `make test` work on a fresh clone (they run `setup` first when needed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup test demo clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	# xtcocotools' PyPI wheel is built against numpy 1 and crashes on numpy 2: build it from source.
	$(PIP) install numpy cython
	$(PIP) install --no-build-isolation --no-binary xtcocotools xtcocotools
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

# pytest exits 5 when it collects no tests: that must fail too, never pass silently.
test: setup
	@$(VENV)/bin/python -m pytest -q; s=$$?; \
	if [ $$s -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$s

demo: setup
	$(VENV)/bin/regpose demo

clean-venv:
	rm -rf $(VENV)
