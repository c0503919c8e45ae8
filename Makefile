# Every target sets up the ComfyUI host first (idempotent, fast when already done).
# SPARE_COMFYUI_DIR=/path/to/ComfyUI (and SPARE_COMFYUI_PYTHON) use your own ComfyUI instead.
HOST_PYTHON = $(shell python3 -c "import json;print(json.load(open('.host/host.json'))['python'])")
HOST_COMFYUI = $(shell python3 -c "import json;print(json.load(open('.host/host.json'))['comfyui'])")
PORT ?= 8188

.PHONY: setup demo serve test workflows

setup:
	python3 scripts/setup_host.py

demo: setup
	"$(HOST_PYTHON)" scripts/run_demo.py

serve: setup
	cd "$(HOST_COMFYUI)" && "$(HOST_PYTHON)" main.py --cpu --listen 127.0.0.1 --port $(PORT)

test: setup
	"$(HOST_PYTHON)" -m pytest tests -q -ra

workflows: setup
	"$(HOST_PYTHON)" scripts/build_workflows.py
