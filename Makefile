# edgeprobe: `make demo` installs and measures mobilenet_v2 on this machine; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.edgeprobe-installed

.PHONY: install runner litert-env android-tools android-core android-test demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	$(PIP) install -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP) runner

# Build the native C++ runner against the executorch wheel and install it in the user data dir.
runner: $(STAMP)
	$(VENV)/bin/edgeprobe runner build

# The LiteRT converter's own environment (--format tflite), beside the project venv: docs/runtimes.md.
litert-env: $(STAMP)
	PROJECT_PYTHON=$(PY) bash .ci/litert-env.sh

# android_app's JVM parts without Gradle or the Android SDK (docs/android.md): kotlinc from npm, then
# core's runnable jar (the runner server the app hosts, as a plain JVM program) and its JUnit tests.
KOTLIN_DIR ?= $(HOME)/.cache/edgeprobe/kotlin
android-tools:
	test -x $(KOTLIN_DIR)/node_modules/kotlin-compiler/bin/kotlinc || \
	  npm install --prefix $(KOTLIN_DIR) --no-audit --no-fund --loglevel=error kotlin-compiler@2.4.20

android-core: android-tools
	bash android_app/tools/build.sh core

android-test: android-core
	bash android_app/tools/build.sh test

demo: install
	$(VENV)/bin/edgeprobe bench mobilenet_v2 --device local

test: install
	$(PY) -m pytest -ra $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build .pytest_cache
