# The README's two commands:
#   make demo   install everything into .venv, then the main job
#   make test   install everything into .venv, then lint (ruff), the C++ smoke test (ctest),
#               pytest, and the package check (sdist -> wheel -> a fresh venv loads a model and runs an op)
# Installing is idempotent and the extension build is incremental (build/).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch the extension is built against (a CUDA 13.0 build on this project's machines).
TORCH_SPEC ?= torch==2.14.1
# The CUDA arch to build for when none is visible: csrc/DEFAULT_CUDA_ARCH (setup.py and
# CMakeLists.txt read it); TORCH_CUDA_ARCH_LIST overrides it.
JOBS ?= $(shell nproc)
NVCC ?= /usr/local/cuda/bin/nvcc
# The CMake build adds the CUDA kernels whenever the toolkit is there, as setup.py does.
CMAKE_CUDA := $(shell test -x $(NVCC) && echo -DMIGA_FAST_CUDA=ON -DCMAKE_CUDA_COMPILER=$(NVCC))

.PHONY: install dev demo test test-python test-cpp package-check lint format bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip "setuptools>=70" wheel ninja
	$(BIN)/pip install -q "$(TORCH_SPEC)" numpy
	touch $@

install: $(VENV)/.deps
	$(BIN)/pip install -q --no-build-isolation ".[test]"
	$(BIN)/pip install -q "diffusers>=0.30"  # apart from .[test]: see pyproject.toml

# Contributors: an editable install into .venv (Python edits take effect at once; rerun
# after editing csrc/). `make install` puts a regular install back.
dev: $(VENV)/.deps
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	$(BIN)/pip install -q "diffusers>=0.30"

demo: install
	$(BIN)/miga-fast backends
	$(BIN)/miga-fast demo

test-cpp: install
	mkdir -p build && cmake -S . -B build/cmake $(CMAKE_CUDA) -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake.log 2>&1 || (cat build/cmake.log; exit 1)
	cmake --build build/cmake -j $(JOBS)
	ctest --test-dir build/cmake --output-on-failure

# pytest is run through its script, not `python -m`, so the installed package (with
# its compiled kernels) is imported rather than the source folder.
test-python: install
	$(BIN)/pytest -q tests

# ruff (pyproject.toml [tool.ruff]): pyflakes, pycodestyle, import order, bugbear, pyupgrade,
# and the formatting of Python (ruff format) and C++/CUDA (clang-format, .clang-format);
# both formatters are pinned in the test extra. `make format` applies them.
PY_SOURCES := miga_fast tests benchmarks triton_kernels setup.py
CXX_SOURCES = $(shell find csrc -name '*.h' -o -name '*.cpp' -o -name '*.cu')
lint: install
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/clang-format --dry-run -Werror $(CXX_SOURCES)

format: install
	$(BIN)/ruff check --fix -q $(PY_SOURCES)
	$(BIN)/ruff format -q $(PY_SOURCES)
	$(BIN)/clang-format -i $(CXX_SOURCES)

package-check: install
	VENV=$(VENV) bash .ci/package-check

test: lint test-cpp test-python package-check

bench: install
	$(BIN)/python benchmarks/bench_projection.py
	$(BIN)/python benchmarks/bench_ssim.py
	$(BIN)/python benchmarks/bench_mine.py
	$(BIN)/python benchmarks/bench_attack.py
	$(BIN)/python benchmarks/profile_attack.py
	$(BIN)/python benchmarks/bench_purify.py
	$(BIN)/python benchmarks/bench_integrations.py
	$(BIN)/python benchmarks/bench_scale.py

# One prepared command for a GPU session (benchmarks/gpu_check.py): build for the visible
# GPU, every CUDA test, compute-sanitizer, short benchmarks against the peers, a JSON and a
# Markdown summary in benchmarks/results/. It uses .venv's Python where there is one, else
# the machine's python3 (a lent GPU machine has its own torch); without a GPU it runs the
# dry path (build, emulated CUDA tests, CPU benchmarks), as CI does.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

clean:
	rm -rf build dist *.egg-info miga_fast/_C*.so miga_fast/_build_info.py
