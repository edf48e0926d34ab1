"""Image names the Docker backend knows about."""

from __future__ import annotations

# The upstream emulator, pinned: `latest` moves under our users' feet. 1.0.0 is the version
# tag upstream documents (docs/DOCKER.md of jeremypoulter/OpenEVSE_Emulator); no registry is
# reachable from this workplace, so the pin is not verified here. Bump it deliberately.
UPSTREAM_IMAGE_REPO = "ghcr.io/jeremypoulter/openevse_emulator"
UPSTREAM_IMAGE_TAG = "1.0.0"
UPSTREAM_IMAGE = f"{UPSTREAM_IMAGE_REPO}:{UPSTREAM_IMAGE_TAG}"

# Ours, built offline by `harness image build` (harness.docker.image).
BASE_IMAGE = "openevse-harness/python-base:bookworm"
LOCAL_IMAGE = "openevse-harness/emulator:local"

IMAGE_ENV = "HARNESS_EMULATOR_IMAGE"
