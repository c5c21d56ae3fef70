#!/usr/bin/env bash
# Here, before a GPU call: what scripts/gpu_demo_session.sh needs that the GPU machine lacks. The
# Python packages LDAE needs beyond that machine's image (monai, nibabel, nilearn: pure-Python
# wheels, from PyPI) go to .whl/, Colin27 and the AAL labels (the cohort's templates, Debian's
# mricron-data) to .gpu/mricron/. Both folders are ignored by git (.git/info/exclude) and travel
# with the call as carried paths: carry [".whl", ".gpu"].
set -euo pipefail
cd "$(dirname "$0")/.."
for d in /.whl/ /.gpu/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
py=${GPU_PYTHON:-3.12}
rm -rf .whl && mkdir -p .whl .gpu/mricron
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "monai==$(python3 -c 'import monai; print(monai.__version__)')" \
  "nibabel==$(python3 -c 'import nibabel; print(nibabel.__version__)')" \
  "nilearn==$(python3 -c 'import nilearn; print(nilearn.__version__)')"
templates=${LDAE_MRICRON_TEMPLATES:-/usr/share/mricron/templates}
cp "$templates/ch2bet.nii.gz" "$templates/aal.nii.gz" .gpu/mricron/
du -sh .whl .gpu
