# Developer shortcuts; CI runs the README's test command (everything), the same as `make test`.
# Each target uses the project's virtual environment (.venv) unless PYTHON is given.

PYTHON ?= .venv/bin/python
FAST = not processes and not engine and not browser and not docker and not slow
# pytest-xdist workers for test-fast: each has its own PostgreSQL test database (kept by
# --reuse-db) and Redis database (tests/conftest.py); N=0 runs in this process.
N ?= 2

.PHONY: test-fast test lint lock up

# The tests that start no process, engine, browser or docker tool (markers: pyproject.toml,
# given in tests/conftest.py).
test-fast:
	$(PYTHON) -m pytest -q -m "$(FAST)" -n $(N) $(ARGS)

test:
	$(PYTHON) -m pytest $(ARGS)

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	$(PYTHON) manage.py check
	$(PYTHON) manage.py makemigrations --check --dry-run

# Exact versions with hashes for the images (docker/Dockerfile, docker/Dockerfile.agent) from
# pyproject's dependencies; run after changing them, commit requirements/.
lock:
	$(PYTHON) -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --extra kubernetes \
		--output-file requirements/web.txt pyproject.toml
	$(PYTHON) -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --extra agent \
		--output-file requirements/agent.txt pyproject.toml

up:
	$(PYTHON) -m berth.cli up
