# make demo   set up .venv, build the extension, run the main job
# make test   set up .venv, build the extension and the C++ library, run every test
# make test-older-torch   the sources against torch 2.13 as C++17: the CPU build, smoke-tested, and the CUDA
#                         sources through nvcc's front end
# make test-kernels   run the CUDA kernels on the CPU (ASan+UBSan and TSan builds) + the ptxas gate;
#                     needs no venv, no torch and no GPU
# make audit-barriers   remove each barrier, async-copy wait and wgmma fence of the implicit-GEMM and transpose
#                       kernels in turn: the kernel tests must fail (10-15 minutes)
# demo and test are idempotent and quick once set up.

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
MAX_JOBS    ?= 2
CMAKE_BUILD ?= build/cmake
DEPS_STAMP  := $(VENV)/.deps-installed
DEV_STAMP   := $(VENV)/.editable-installed
SOURCES     := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h') setup.py \
               tools/build_env.py
# What else decides the build (CPU only, archs, toolkit, compiler): a file rewritten only when it changes,
# so that a build configured differently is built again.
BUILD_CONFIG := build/config.txt
BUILD_CONFIG_TEXT := RCM_FSAD_CPU_ONLY=$(RCM_FSAD_CPU_ONLY) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST) \
                     CUDA_HOME=$(CUDA_HOME) CUDA_PATH=$(CUDA_PATH) CXX=$(CXX)
# A deleted extension module is built again too.
ifeq ($(wildcard rcm_fsad_ops/_C*.so),)
$(shell rm -f rcm_fsad_ops/.built)
endif

export MAX_JOBS
# The venv's tools (ninja, cmake's generator and torch's build backend) without activating it.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test test-python test-cpp test-older-torch test-kernels audit-barriers build cmake bench info clean FORCE

demo: build
	$(PY) -m rcm_fsad_ops demo

# In this order, one after the other, so that pytest's summary stays the last line.
test: test-kernels test-cpp test-older-torch test-python
.NOTPARALLEL: test

test-python: build
	$(PY) -m pytest tests -q

test-cpp: cmake
	cd $(CMAKE_BUILD) && ctest --output-on-failure

# The sources against torch 2.13 (its CPU wheel: on this machine's disk, else from PyTorch's index) as C++17,
# what torch before 2.12 compiles extensions as: the CPU build, smoke-tested against the float64 reference,
# and the CUDA sources through nvcc's front end (build/older-torch/; 2-3 minutes the first time). The venv's
# nvidia-* wheels hold the CUDA headers the toolkit lacks.
test-older-torch: $(DEPS_STAMP)
	$(PY) tools/older_torch_check.py

# The __global__ kernels of csrc/kernels/ run on the CPU through tests/kernels/cuda_emulation.h, in an
# ASan+UBSan build (build/kernels-asan) and a TSan build (build/kernels-tsan), then
# `tools/ptxas_report.py --check`. Ends with "N passed, M failed".
test-kernels:
	bash tests/kernels/run_kernel_tests.sh

# Each barrier and async-copy wait of the implicit-GEMM and transpose kernels removed on its own must fail the
# kernel tests (tools/barrier_audit.py; 10-15 minutes, so not part of `make test`).
audit-barriers:
	python3 tools/barrier_audit.py

build: $(DEV_STAMP) rcm_fsad_ops/.built

bench: build
	$(PY) -m benchmarks

info: build
	$(PY) -m rcm_fsad_ops info

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The checkout goes on the venv's path (what an editable install does) and the extension is built
# in place, incrementally, by ninja; `pip install --no-build-isolation .` installs it for good.
$(DEV_STAMP): $(DEPS_STAMP)
	$(PY) -c 'import os, sysconfig; open(os.path.join(sysconfig.get_paths()["purelib"], "rcm_fsad_ops_checkout.pth"), "w").write(os.getcwd() + "\n")'
	touch $@

# The stamp takes the time the build started, and only once it succeeds: a source edited while it
# runs is newer than the stamp, so the next make builds again.
rcm_fsad_ops/.built: $(SOURCES) $(DEPS_STAMP) $(BUILD_CONFIG)
	touch $@.started
	$(PY) setup.py -q build_ext --inplace
	mv $@.started $@

# Its recipe runs at every make but leaves the file (and its time) alone unless the text changed, and make
# looks at the time again after it: only a change rebuilds. (make -n cannot know, and lists the build.)
$(BUILD_CONFIG): FORCE
	@mkdir -p $(@D)
	@echo '$(BUILD_CONFIG_TEXT)' | cmp -s - $@ || echo '$(BUILD_CONFIG_TEXT)' > $@

cmake: $(DEPS_STAMP)
	$(PY) tools/cmake_configure.py $(CMAKE_BUILD)
	cmake --build $(CMAKE_BUILD) -j $(MAX_JOBS)

clean:
	rm -rf build rcm_fsad_ops/_C*.so rcm_fsad_ops/.built rcm_fsad_ops/.built.started
