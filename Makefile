# Two entry points: `make demo` and `make test`. Both build the venv from the committed lock.
PYTHON ?= python3
VENV := .venv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed

.PHONY: demo demo-elastic test lock clean serve

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync -q -p $(VENV)/bin/python requirements/lock.txt
	$(VENV)/bin/uv pip install -q -p $(VENV)/bin/python --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emprocess demo demo-output

# The sample bent by smooth 6-px fields, one per slice, aligned in elastic mode (the image run only).
demo-elastic: $(STAMP)
	$(VENV)/bin/emprocess demo demo-elastic-output --deformation 6

# Serve the demo's outputs to neuroglancer (HTTP Range + CORS) and print the viewer links.
serve: $(STAMP)
	$(VENV)/bin/emprocess serve demo-output

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Regenerate the pinned lock after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile -q --python-version 3.11 pyproject.toml --extra test --extra bench --extra kubernetes \
		--no-header -o requirements/lock.txt

clean:
	rm -rf $(VENV) demo-output demo-elastic-output
