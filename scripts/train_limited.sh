#!/usr/bin/env bash
# The clean-accuracy claims below the shapes ceiling: the exact commands behind
# papers/shapes/data-limited/*.json (first 2000 training images, 100 epochs, seed 0).
#
#   LIMITED_STAGE=/path/to/stage bash scripts/train_limited.sh [ENTRY ...]
#
# Trains into $LIMITED_STAGE (default: ./limited), one entry after the other (default: all), and
# copies each finished card into papers/shapes/data-limited. The checkpoints stay in the stage (the
# cards hold their SHA-256 and per-epoch accuracy curves). A card that exists is skipped; a stopped
# entry resumes from its `.partial` state on the next call.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
stage="${LIMITED_STAGE:-limited}"
mkdir -p "$stage"
stage="$(cd "$stage" && pwd)"
cards="$repo/papers/shapes/data-limited"
ALL=(standard mixup mtlat tlat fgsm label_smoothing targeted_fgsm)
entries=("$@")
[ ${#entries[@]} -eq 0 ] && entries=("${ALL[@]}")
for name in "${entries[@]}"; do
  if [[ ! " ${ALL[*]} " == *" $name "* ]]; then echo "unknown entry: $name" >&2; exit 2; fi
  if [ -f "$cards/$name.json" ]; then echo "== $name: card exists, skipped"; continue; fi
  echo "== $name: robench train --defense $name --train-images 2000 --epochs 100 ($(date -u +%FT%TZ))"
  (cd "$stage" && robench train --defense "$name" --train-images 2000 --epochs 100 --seed 0 --out "$name.pt")
  cp "$stage/$name.json" "$cards/$name.json"
done
