# EpipolarPose: self-supervised 3D human pose from multi-view geometry.
# `make help` lists the targets. Any target that needs Python creates .venv on first use.

SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-mediapipe.txt | md5sum | cut -c1-8)
DOCS_STAMP := $(VENV)/.docs-$(shell md5sum < requirements-docs.txt | cut -c1-8)

# Stage 1 knobs (make pseudolabels MANIFEST=... OUT=... GEOMETRY=... DETECTOR=...)
MANIFEST ?= data_manifests/synthetic.yaml
GEOMETRY ?= pooled
# auto: the project's 2D network where its checkpoint was trained on this manifest's dataset (on
# the synthetic set it is trained first), else MediaPipe (pipeline.detect.registry.resolve_detector)
DETECTOR ?= auto
NOISE_PX ?= 0
OUTLIER_RATE ?= 0
SCHEDULER ?=
WORKERS ?= 2
SIZE ?= 1
OUT ?= outputs/pseudolabels/synthetic_$(GEOMETRY)_$(DETECTOR)
CHECKPOINT_2D ?= outputs/runs/pose2d/best.pt
DETECTIONS ?=
CHECK_OUT ?= outputs/detector_check/$(notdir $(basename $(MANIFEST)))_$(DETECTOR)
CHECK_FRAMES ?= 40
CHECK_OPTS ?=
# Stage 2 knobs. STUDENT=lifter trains / evaluates / predicts with the keypoint lifter (2D joints
# -> 3D, train/lifter.py) instead of the volumetric network; predict then defaults to the lifter
# shipped in the repository (SHIPPED_LIFTER) until `make train STUDENT=lifter` has made one.
STUDENT ?= volumetric
SHIPPED_LIFTER := train/weights/lifter_w1_h512_mediapipe.pt
ifeq ($(STUDENT),lifter)
CONFIG ?= train/configs/lifter_w1_h512_pseudo.yaml
RUN ?= outputs/runs/lifter_pseudo
DEFAULT_CHECKPOINT = $(if $(wildcard $(RUN)/best.pt),$(RUN)/best.pt,$(SHIPPED_LIFTER))
# the lifter reads 2D: make eval lifts the test frames from the labels' run's detections
STUDENT_EVAL_OPTS = --detections outputs/pseudolabels/synthetic_multiview_$(DETECTOR)
else ifeq ($(STUDENT),volumetric)
# The 3D network starts from the project's 2D network (CHECKPOINT_2D) where that exists when it
# trains (3 epochs), else from scratch (12 epochs): docs/stage2.md sections 4e-4f. CONFIG=... wins.
CONFIG_FROM_2D := train/configs/demo_r18w32_96px_d24_pseudo_from2d.yaml
CONFIG_SCRATCH := train/configs/demo_r18w32_96px_d24_pseudo.yaml
CONFIG ?= $(if $(wildcard $(CHECKPOINT_2D)),$(CONFIG_FROM_2D),$(CONFIG_SCRATCH))
RUN ?= outputs/runs/pose3d_pseudo
DEFAULT_CHECKPOINT = $(RUN)/best.pt
else
$(error STUDENT=$(STUDENT): choose volumetric (the default) or lifter)
endif
CONFIG_2D ?= train/configs/demo2d_r18w32_96px.yaml
# e.g. TRAIN_OPTS=--allow-inconsistent-labels (train on a stage-1 run flagged by its exit 3)
TRAIN_OPTS ?=
# the 2D network's options, e.g. the longer recipe of docs/stage2.md 4e (76 mm instead of 92, 40 min
# instead of 26 on a 2-core AVX2 CPU, 4f): TRAIN_2D_OPTS="--epochs 12 --milestones 10"
# TRAIN_OPTS="--epochs 6 --milestones 5"
TRAIN_2D_OPTS ?=
SHARDS ?= $(OUT)
# Evaluation
CHECKPOINT ?= $(DEFAULT_CHECKPOINT)
EVAL_OUT ?= outputs/eval/$(notdir $(RUN))
EVAL_OPTS ?=
PYTEST_ARGS ?=
# Prediction (make predict INPUT=video|image folder|manifest CHECKPOINT=...)
TEST_VIDEO := outputs/data/test_video
INPUT ?= $(TEST_VIDEO)/manifest.yaml
# outputs/predict/<parent folder>_<stem> of the input (a manifest.yaml: of its folder), so two
# videos of one name in different folders do not collide (train.footage.default_out, the same rule)
PREDICT_SRC = $(patsubst %/manifest.yml,%,$(patsubst %/manifest.yaml,%,$(abspath $(INPUT))))
# outputs/predict/<stem> for an input in this folder, else outputs/predict/<parent>_<stem>
PREDICT_OUT ?= outputs/predict/$(if $(filter $(CURDIR)/,$(dir $(PREDICT_SRC))),,$(notdir $(patsubst %/,%,$(dir $(PREDICT_SRC))))_)$(notdir $(basename $(PREDICT_SRC)))
PREDICT_OPTS ?=

.PHONY: help venv docs data lifter-model data-real real-demo real-labels real-finetune real-lifter train-2d pseudolabels detector-check train train-3d eval report test bench bench-gpu flip-sweep ablation clean test-video predict export onnx

help: ## list every target
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The optional MediaPipe extra goes in without its declared dependencies (they would pull
# numpy 1.x and a second OpenCV); see requirements-mediapipe.txt. Set NO_MEDIAPIPE=1 to skip it.
$(STAMP): requirements.txt requirements-mediapipe.txt
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@if [ -z "$(NO_MEDIAPIPE)" ]; then $(PY) -m pip install -q --no-deps -r requirements-mediapipe.txt; fi
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP) ## create .venv and install requirements.txt (automatic for every target)

# The documentation site's tools (MkDocs) go into .venv on first use of make docs / make test.
$(DOCS_STAMP): requirements-docs.txt | $(STAMP)
	$(PY) -m pip install -q -r requirements-docs.txt
	@rm -f $(VENV)/.docs-*; touch $@

DOCS_OPTS ?=
docs: $(STAMP) $(DOCS_STAMP) ## build the documentation site into outputs/site (MkDocs; DOCS_OPTS=--strict as CI)
	$(PY) -m mkdocs build --site-dir outputs/site $(DOCS_OPTS)

data: $(STAMP) ## render the synthetic multi-view dataset and its contact sheet (SIZE=k for k x frames)
	$(PY) -m pipeline data --manifest $(MANIFEST) --size $(SIZE) --workers $(WORKERS)

TRAIN_2D_CMD = $(PY) -m train fit --config $(CONFIG_2D) --manifest $(MANIFEST) \
  --out $(dir $(CHECKPOINT_2D)) $(TRAIN_2D_OPTS)

$(CHECKPOINT_2D): | $(STAMP)
	$(MAKE) data
	$(TRAIN_2D_CMD)

train-2d: $(STAMP) ## train the 2D network (stage 1's default detector) on the synthetic 2D ground truth
	$(MAKE) data
	$(TRAIN_2D_CMD)

pseudolabels: $(STAMP) ## stage 1: detect 2D, fit geometry, triangulate, write Parquet shards (Dask)
	@if [ "$(MANIFEST)" = "data_manifests/synthetic.yaml" ]; then $(MAKE) data; fi
	@# the 2D network is trained first where DETECTOR (auto included) stands for it here
	@d=$$($(PY) -m pipeline which-detector --manifest $(MANIFEST) --detector $(DETECTOR) \
	  --checkpoint-2d $(CHECKPOINT_2D)) || exit 1; \
	  if [ "$$d" = "net" ]; then $(MAKE) $(CHECKPOINT_2D); fi
	@# exit 2 = finished, some frames or camera pairs recorded as failed (failures.parquet);
	@# exit 3 = labels written but the detections disagree across views (summary.json): stop
	$(PY) -m pipeline pseudolabels --manifest $(MANIFEST) --out $(OUT) --geometry $(GEOMETRY) \
	  --detector $(DETECTOR) --checkpoint-2d $(CHECKPOINT_2D) --noise-px $(NOISE_PX) \
	  --outlier-rate $(OUTLIER_RATE) --workers $(WORKERS) $(if $(SCHEDULER),--scheduler $(SCHEDULER),) \
	  $(if $(DETECTIONS),--detections $(DETECTIONS),); rc=$$?; test $$rc -eq 0 -o $$rc -eq 2

detector-check: $(STAMP) ## is DETECTOR fit for labelling MANIFEST? 2D error vs ground truth, confidence ranking, cross-view consistency
	$(PY) -m tools detector-check --manifest $(MANIFEST) --detector $(DETECTOR) \
	  --checkpoint-2d $(CHECKPOINT_2D) --max-frames $(CHECK_FRAMES) --workers $(WORKERS) \
	  --out $(CHECK_OUT) $(if $(DETECTIONS),--detections $(DETECTIONS),) $(CHECK_OPTS)

# make train labels with all views by default: on the 2D network's detections its labels are
# much closer to the truth than the pooled pairs' (docs/figures/labels.md).
train: GEOMETRY := multiview
train: $(STAMP) ## the main job: train the 3D network on the pseudo-label shards (runs the stages before it)
	@# a finished stage-1 run is not labelled again, but its exit-3 flag still holds: the
	@# trainer refuses shards whose summary.json says 'inconsistent' (unless TRAIN_OPTS allows)
	@test -f $(SHARDS)/summary.json || $(MAKE) pseudolabels GEOMETRY=$(GEOMETRY)
	@# a new make: CONFIG is chosen after stage 1 has trained the 2D network (a fresh clone)
	@$(MAKE) --no-print-directory train-3d GEOMETRY=$(GEOMETRY)

train-3d: GEOMETRY := multiview
train-3d: $(STAMP) ## train the 3D network (STUDENT=lifter: the lifter) on SHARDS as they are (make train's last step)
	$(PY) -m train fit --config $(CONFIG) --shards $(SHARDS) --manifest $(MANIFEST) --out $(RUN) \
	  $(if $(filter $(CONFIG_FROM_2D),$(CONFIG)),--init-2d-from $(CHECKPOINT_2D),) $(TRAIN_OPTS)

eval: $(STAMP) ## evaluate a 3D checkpoint on the test split (CHECKPOINT=...): MPJPE, N-/PA-MPJPE, PSS, PCK, AUC
	$(PY) -m eval metrics --checkpoint $(CHECKPOINT) --manifest $(MANIFEST) --out $(EVAL_OUT) \
	  $(STUDENT_EVAL_OPTS) $(EVAL_OPTS)

test-video: $(STAMP) ## write the synthetic test subjects' frames as MP4 videos with their ground truth (make predict's default INPUT)
	$(MAKE) data
	$(PY) -m pipeline test-video --manifest $(MANIFEST) --out $(TEST_VIDEO)

predict: $(STAMP) ## the 3D network on INPUT (video, image folder or manifest; STUDENT=lifter: the keypoint lifter, shipped): poses.parquet, overlay MP4, contact sheet (PREDICT_OPTS="--reference ground-truth --smooth ...")
	@test -f "$(CHECKPOINT)" || { echo "error: no 3D network checkpoint at $(CHECKPOINT): \`make train\` makes one, or predict with the shipped keypoint lifter: make predict STUDENT=lifter (or pass CHECKPOINT=path)" >&2; exit 1; }
	@if [ "$(INPUT)" = "$(TEST_VIDEO)/manifest.yaml" ] && [ ! -f "$(INPUT)" ]; then $(MAKE) test-video; fi
	$(PY) -m train predict $(INPUT) --checkpoint $(CHECKPOINT) --out $(PREDICT_OUT) $(PREDICT_OPTS)

# The shipped keypoint lifter: its recipe on make train's labels, slimmed to the network's weights.
lifter-model: $(STAMP) ## (re)make the shipped keypoint lifter SHIPPED_LIFTER from make train's multiview labels (~2 min of training)
	@test -f outputs/pseudolabels/synthetic_multiview_$(DETECTOR)/summary.json || \
	  $(MAKE) pseudolabels GEOMETRY=multiview
	$(PY) -m train fit --config train/configs/lifter_w1_h512_mediapipe.yaml \
	  --shards outputs/pseudolabels/synthetic_multiview_$(DETECTOR) --out outputs/runs/lifter_mediapipe
	$(PY) -m train slim --checkpoint outputs/runs/lifter_mediapipe/best.pt --out $(SHIPPED_LIFTER)

export: $(STAMP) ## BVH, VideoPose3D npz and CSV of a predict folder (PREDICT_OUT=...)
	$(PY) -m train export $(PREDICT_OUT)

# The ONNX extra lives in its own folder, put on PYTHONPATH only for the export and its test:
# onnx needs protobuf >= 6, the MediaPipe extra protobuf < 5 (requirements-onnx.txt).
ONNX_SITE := outputs/onnx-site
ONNX_STAMP := $(ONNX_SITE)/.installed-$(shell md5sum < requirements-onnx.txt | cut -c1-8)
ONNX_OUT ?= outputs/onnx/$(notdir $(RUN)).onnx
ONNX_TOLERANCE ?= 1e-3

$(ONNX_STAMP): requirements-onnx.txt | $(STAMP)
	@rm -rf $(ONNX_SITE)
	$(PY) -m pip install -q --no-deps --target $(ONNX_SITE) -r requirements-onnx.txt
	@touch $@

onnx: $(STAMP) $(ONNX_STAMP) ## the 3D network (CHECKPOINT=...) as ONNX at ONNX_OUT; fails when ONNX Runtime differs from PyTorch by more than ONNX_TOLERANCE
	PYTHONPATH=$(ONNX_SITE) $(PY) -m train export-onnx --checkpoint $(CHECKPOINT) --out $(ONNX_OUT) \
	  --tolerance $(ONNX_TOLERANCE)

report: $(STAMP) ## pseudo-label quality report of a stage-1 run (SHARDS=run folder): tables and plots
	$(PY) -m eval report --run $(SHARDS) --out $(SHARDS)/report

# The ablation table (issue 12): ABLATION_OPTS passes e.g. --budget gpu, --seeds 0,1,2,3,
# --rows multiview,mean-pose, --table-only. Resumable: rerun the same command to continue.
ABLATION_OUT ?= outputs/ablation
ABLATION_OPTS ?=
ablation: $(STAMP) ## the seeded ablation table (3D networks started from the 2D one, 6 epochs): every label source x 3 seeds, refinement unit, mean pose (resumable, ~5 h on 2 cores; ABLATION_OPTS="--seeds 0,1" for part)
	$(MAKE) data
	@$(MAKE) $(CHECKPOINT_2D)
	$(PY) -m eval ablation --manifest $(MANIFEST) --out $(ABLATION_OUT) \
	  --checkpoint-2d $(CHECKPOINT_2D) --workers $(WORKERS) $(ABLATION_OPTS)

test: $(STAMP) $(DOCS_STAMP) $(ONNX_STAMP) ## run the test suite (CPU, a few minutes; the ONNX test uses ONNX_SITE) and build the docs with --strict
	$(PY) -m mkdocs build --strict --quiet --site-dir outputs/site
	ONNX_SITE=$(ONNX_SITE) $(PY) -m pytest -q $(PYTEST_ARGS)

# BVH=path/to/clip.bvh feeds the geometry bench real motion capture (the docs' figures use
# the CMU clip 131_01); without it the bench uses the project's procedural motion.
BVH ?=
PEER_SITE := outputs/peer-site

# The stage-1 breakdown runs on a larger workload than the embedded set: BENCH_SIZE x the frames
# of BENCH_SUBJECTS, rendered once into BENCH_ROOT (SIZE 4, three subjects: 24,000 frame-views,
# about 8 minutes of rendering on 2 cores), so that per-run and per-subject costs are amortised.
BENCH_SIZE ?= 4
BENCH_SUBJECTS ?= S1,S9,S11
BENCH_ROOT ?= outputs/data/synthetic_x$(BENCH_SIZE)
# make train's labels: the trainer's data path of make bench's stage-2 rows
BENCH_SHARDS ?= outputs/pseudolabels/synthetic_multiview_$(DETECTOR)

bench: $(STAMP) ## measure geometry accuracy/speed, stage-1 breakdown (non-detector share) and scaling, trainer speed and memory (tools/)
	@$(MAKE) $(CHECKPOINT_2D)
	$(PY) -m tools bench-geometry --out outputs/bench $(if $(BVH),--bvh $(BVH),)
	$(PY) -m tools bench-thresholds --out outputs/bench $(if $(BVH),--bvh $(BVH),)
	$(PY) -m pipeline data --manifest data_manifests/synthetic.yaml --size $(BENCH_SIZE) \
	  --subjects $(BENCH_SUBJECTS) --root $(BENCH_ROOT) --workers $(WORKERS) --no-sheet
	$(PY) -m tools bench-stage1 --out outputs/bench --checkpoint-2d $(CHECKPOINT_2D) \
	  --root $(BENCH_ROOT) --subjects $(BENCH_SUBJECTS)
	$(PY) -m tools bench-association --out outputs/bench
	@test -d $(PEER_SITE)/aniposelib || $(PY) -m pip install -q --no-deps --target $(PEER_SITE) \
	  -r tools/requirements-peer.txt || echo "aniposelib not installed: the peer column stays empty"
	PYTHONPATH=$(PEER_SITE) $(PY) -m tools bench-peer --out outputs/bench $(if $(BVH),--bvh $(BVH),)
	@# make train's networks on random input and, where make train's labels exist, through
	@# the trainer's own data path: images/s, data wait, minutes of their epochs; then the paper's
	$(PY) -m tools bench-train --config $(CONFIG_2D) --config $(CONFIG_FROM_2D) --config $(CONFIG_SCRATCH) \
	  $(if $(wildcard $(BENCH_SHARDS)/shards),--shards $(BENCH_SHARDS),) --steps 20 \
	  --docs-table docs/figures/tables/train_speed.md
	$(PY) -m tools bench-train --config train/configs/paper_r50_256px_d64_adam1e-3_140ep_pseudo.yaml \
	  --docs-table docs/figures/tables/train_speed_paper.md
	@echo "2D networks as stage 1's detector: ms per image on one thread (docs/figures/speed.md)"
	$(PY) -m tools bench-train --config $(CONFIG_2D) --threads 1 --batch-size 64 --steps 10 --inference-only
	$(PY) -m tools bench-train --config $(CONFIG_2D) --threads 1 --batch-size 64 --steps 10 --inference-only \
	  --model width=64
	$(PY) -m tools bench-train --config $(CONFIG_2D) --threads 1 --batch-size 64 --steps 10 --inference-only \
	  --model width=64 --model input_size=128
	$(PY) -m tools bench-train --config train/configs/paper_r50_256px_d64_adam1e-3_140ep_pseudo.yaml \
	  --threads 1 --batch-size 16 --steps 3 --inference-only --model depth_bins=1

# One short prepared script for a CUDA machine (tools/gpu_bench.py): stage 1 with the 2D network
# on the GPU, the paper config's training at batch 32/64/128 with AMP + channels-last, a torchrun
# DDP run, its GPU checkpoint resumed on the CPU, and last stage 1 on 1, 2 and all CPU cores (the
# scaling table's many-core rows). Without CUDA: say so (the tiny CPU
# fallback of the same steps runs in tests/test_gpu_bench.py).
bench-gpu: $(STAMP) ## GPU figures: stage 1 on the GPU, paper-config images/s at batch 32/64/128, DDP, resume on CPU
	@test -d outputs/data/synthetic/gt || $(MAKE) data
	$(PY) -m tools bench-gpu --out outputs/bench/gpu --checkpoint-2d $(CHECKPOINT_2D)

REAL := outputs/data/pose2sim_demo
REAL_RUNS := outputs/pseudolabels/pose2sim
REAL_MULTI := outputs/data/pose2sim_multi
# No pixel thresholds: stage 1 measures each camera's 2D noise (BlazePose on the 1920-pixel
# frames: 4.6-7.2 px) and derives them (RANSAC 14-21 px, validity 18-29 px; the 16 / 20 px chosen
# by hand before gave the same cameras to 0.03 deg: docs/figures/labels.md).
REAL_OPTS := --workers $(WORKERS)

flip-sweep: $(STAMP) ## pooled pairs over the Human3.6M rigs, 2/5/10 px noise, 10 % outliers, RANSAC 1-20 px: any pair >5 deg off unflagged? (BVH=clip)
	$(PY) -m tools flip-sweep --out outputs/bench/flip_sweep $(if $(BVH),--bvh $(BVH),)

data-real: $(STAMP) ## fetch the Pose2Sim demo (4 real synchronised cameras) through pip and write its manifest
	$(PY) -m tools real-demo --out $(REAL)

real-demo: $(STAMP) ## stage 1 on the real recordings: MediaPipe, swap repair, pooled/multiview/calibrated, compared to its calibration (docs/figures/tables/real_demo.md); the multi-person one associated
	@test -f $(REAL)/manifest.yaml || $(MAKE) data-real
	-$(PY) -m pipeline pseudolabels --manifest $(REAL)/manifest.yaml --detector mediapipe \
	  --geometry pooled $(REAL_OPTS) --out $(REAL_RUNS)_pooled_mediapipe
	$(PY) -m tools real-demo fix-flips $(REAL_RUNS)_pooled_mediapipe --out $(REAL)/detections_unswapped.parquet
	for g in pooled multiview calibrated; do \
	  $(PY) -m pipeline pseudolabels --manifest $(REAL)/manifest.yaml --detector file \
	    --detections $(REAL)/detections_unswapped.parquet --geometry $$g $(REAL_OPTS) \
	    --out $(REAL_RUNS)_$${g}_unswapped; test $$? -le 2 || exit 1; done
	$(PY) -m tools real-demo compare $(REAL_RUNS)_multiview_unswapped
	$(PY) -m tools real-demo compare $(REAL_RUNS)_pooled_unswapped
	$(PY) -m tools real-demo figures $(REAL_RUNS)_pooled_unswapped $(REAL_RUNS)_multiview_unswapped \
	  --out docs/figures/tables/real_demo.md
	@test -f $(REAL_MULTI)/manifest.yaml || $(PY) -m tools real-demo --demo multi --out $(REAL_MULTI)
	$(PY) -m pipeline pseudolabels --manifest $(REAL_MULTI)/manifest.yaml \
	  --detector mediapipe-people --geometry multiview $(REAL_OPTS) \
	  --out $(REAL_RUNS)_multi_multiview; test $$? -le 2 || exit 1
	$(PY) -m tools real-demo people $(REAL_RUNS)_multi_multiview

# Stage 2 on the real recordings: stage 1 on every camera but FT_CAMERA (with crops) of the
# single-person recording and of the multi-person one (its mediapipe-people detections of
# make real-demo replayed), the 3D network (FT_CHECKPOINT) fine-tuned on both sets of
# pseudo-labels (validated on their last 20% frames), then predict on FT_CAMERA before/after,
# scored against each recording's calibrated 4-view triangulation (per person for the second).
FT_CAMERA ?= cam04
FT_GEOMETRY ?= multiview
FT_CHECKPOINT ?= $(CHECKPOINT)
FT_CONFIG ?= train/configs/finetune_r18w32_96px_d24_real.yaml
FT_OUT ?= outputs/finetune/pose2sim_$(FT_CAMERA)
FT_OPTS ?=
REAL_REF := $(REAL_RUNS)_calibrated-multiview_unswapped
REAL_MULTI_DET := $(REAL_RUNS)_multi_multiview/detections
REAL_MULTI_REF := $(REAL_RUNS)_multi_calibrated-multiview
FT_MULTI := $(FT_OUT)/multi

# The labels both real-footage targets train on: stage 1 of each recording without FT_CAMERA, the
# calibrated 4-view references, and the two label sets merged into one training set.
real-labels: $(STAMP) ## stage 1 of both Pose2Sim recordings without FT_CAMERA, their calibrated references, one merged training set
	@test -f $(REAL)/detections_unswapped.parquet -a -d $(REAL_MULTI_DET) || $(MAKE) real-demo
	$(PY) -m tools real-finetune manifest $(REAL)/manifest.yaml --leave-out $(FT_CAMERA) --out $(FT_OUT)/manifest_train.yaml
	$(PY) -m pipeline pseudolabels --manifest $(FT_OUT)/manifest_train.yaml --detector file \
	  --detections $(REAL)/detections_unswapped.parquet --geometry $(FT_GEOMETRY) $(REAL_OPTS) \
	  --out $(FT_OUT)/pseudolabels_train; test $$? -le 2 || exit 1
	$(PY) -m pipeline pseudolabels --manifest $(REAL)/manifest.yaml --detector file \
	  --detections $(REAL)/detections_unswapped.parquet --geometry calibrated-multiview $(REAL_OPTS) \
	  --no-crops --out $(REAL_REF); test $$? -le 2 || exit 1
	$(PY) -m tools real-finetune manifest $(REAL_MULTI)/manifest.yaml --leave-out $(FT_CAMERA) --out $(FT_MULTI)/manifest_train.yaml
	$(PY) -m pipeline pseudolabels --manifest $(FT_MULTI)/manifest_train.yaml --detector file \
	  --detections $(REAL_MULTI_DET) --geometry $(FT_GEOMETRY) $(REAL_OPTS) \
	  --out $(FT_MULTI)/pseudolabels_train; test $$? -le 2 || exit 1
	$(PY) -m pipeline pseudolabels --manifest $(REAL_MULTI)/manifest.yaml --detector file \
	  --detections $(REAL_MULTI_DET) --geometry calibrated-multiview $(REAL_OPTS) \
	  --no-crops --out $(REAL_MULTI_REF); test $$? -le 2 || exit 1
	$(PY) -m tools real-finetune merge $(FT_OUT)/pseudolabels_train $(FT_MULTI)/pseudolabels_train \
	  --manifest $(FT_OUT)/manifest_train.yaml --manifest $(FT_MULTI)/manifest_train.yaml --out $(FT_OUT)/train_set

real-finetune: $(STAMP) real-labels ## fine-tune the 3D network on both Pose2Sim recordings with FT_CAMERA left out; N-/PA-MPJPE on it before/after (per person)
	@test -f $(FT_CHECKPOINT) || { echo "$(FT_CHECKPOINT) missing: run make train first"; exit 1; }
	$(PY) -m train predict $(REAL)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $(FT_CHECKPOINT) \
	  --reference $(REAL_REF) --out $(FT_OUT)/before
	$(PY) -m train predict $(REAL_MULTI)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $(FT_CHECKPOINT) \
	  --detector file --detections $(REAL_MULTI_DET) --reference $(REAL_MULTI_REF) --out $(FT_MULTI)/before
	$(PY) -m train fit --config $(FT_CONFIG) --init-from $(FT_CHECKPOINT) --shards $(FT_OUT)/train_set \
	  --manifest $(FT_OUT)/train_set/manifest.yaml --out $(FT_OUT)/run $(FT_OPTS)
	$(PY) -m train predict $(REAL)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $(FT_OUT)/run/best.pt \
	  --reference $(REAL_REF) --out $(FT_OUT)/after
	$(PY) -m train predict $(REAL_MULTI)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $(FT_OUT)/run/best.pt \
	  --detector file --detections $(REAL_MULTI_DET) --reference $(REAL_MULTI_REF) --out $(FT_MULTI)/after
	$(PY) -m tools real-finetune compare $(FT_OUT)/before $(FT_OUT)/after --out $(FT_OUT)/comparison.json
	$(PY) -m tools real-finetune compare $(FT_MULTI)/before $(FT_MULTI)/after --out $(FT_MULTI)/comparison.json

# The keypoint lifter on the same recordings and left-out camera: the shipped lifter as it is, the
# lifter trained on the recordings' own pseudo-labels from scratch and from the shipped one
# (LIFTER_SEEDS each), and MediaPipe's own 3D (world landmarks); all fed MediaPipe's 2D of
# FT_CAMERA and scored against the calibrated references (docs/figures/tables/real_lifter.md).
LIFTER_SEEDS ?= 0 1 2
LIFTER_REAL_CONFIG ?= train/configs/lifter_w1_h512_real.yaml
LIFT_OUT ?= outputs/lifter_real/pose2sim_$(FT_CAMERA)
LIFT_TABLE ?= docs/figures/tables/real_lifter.md
real-lifter: $(STAMP) real-labels ## the keypoint lifter on FT_CAMERA of both Pose2Sim recordings: shipped, trained on their labels (scratch / from shipped), MediaPipe world landmarks
	for seed in $(LIFTER_SEEDS); do for start in scratch shipped; do \
	  run=$(LIFT_OUT)/$${start}_s$$seed; \
	  test -f $$run/best.pt || $(PY) -m train fit --seed $$seed --no-progress \
	    --config $$(test $$start = shipped && echo $(LIFTER_REAL_CONFIG:.yaml=_from_shipped.yaml) || echo $(LIFTER_REAL_CONFIG)) \
	    --shards $(FT_OUT)/train_set --manifest $(FT_OUT)/train_set/manifest.yaml --out $$run || exit 1; \
	done; done
	for ckpt in $(SHIPPED_LIFTER) $(foreach s,$(LIFTER_SEEDS),$(LIFT_OUT)/scratch_s$(s)/best.pt $(LIFT_OUT)/shipped_s$(s)/best.pt); do \
	  name=$$(echo $$ckpt | sed 's#$(LIFT_OUT)/##; s#/best.pt##; s#.*/##; s#\.pt##'); \
	  $(PY) -m train predict $(REAL)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $$ckpt \
	    --detector file --detections $(REAL)/detections_unswapped.parquet --reference $(REAL_REF) \
	    --no-video --out $(LIFT_OUT)/predict/single_$$name || exit 1; \
	  $(PY) -m train predict $(REAL_MULTI)/manifest.yaml --camera $(FT_CAMERA) --checkpoint $$ckpt \
	    --detector file --detections $(REAL_MULTI_DET) --reference $(REAL_MULTI_REF) \
	    --no-video --out $(LIFT_OUT)/predict/multi_$$name || exit 1; done
	$(PY) -m tools real-finetune world $(REAL)/manifest.yaml --camera $(FT_CAMERA) \
	  --reference $(REAL_REF) --out $(LIFT_OUT)/world_single.json
	$(PY) -m tools real-finetune world $(REAL_MULTI)/manifest.yaml --camera $(FT_CAMERA) --people \
	  --reference $(REAL_MULTI_REF) --out $(LIFT_OUT)/world_multi.json
	$(PY) -m tools real-finetune lifter-table $(LIFT_OUT) --finetune $(FT_OUT) \
	  --docs-table $(LIFT_TABLE)

clean: ## remove generated outputs (keeps .venv)
	rm -rf outputs
