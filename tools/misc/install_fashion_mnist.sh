#!/usr/bin/env bash
# Make Fashion-MNIST available for the demo (nothing is downloaded by Python):
# Debian's dataset-fashion-mnist package puts the four IDX files in
# /usr/share/datasets/fashion-mnist. Install it where it is missing (apt on
# Debian/Ubuntu); elsewhere say what to do.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

have_all() {
    for f in $FILES; do
        [ -f "$1/$f.gz" ] || [ -f "$1/$f" ] || return 1
    done
}

if have_all "$DIR" || have_all data/fashion-mnist; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "[demo] installing Fashion-MNIST: $SUDO apt-get install -y dataset-fashion-mnist"
    $SUDO apt-get install -y dataset-fashion-mnist || {
        $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
    have_all "$DIR" && exit 0
fi
cat >&2 <<MSG
[demo] Fashion-MNIST not found. On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist
(files in $DIR). Elsewhere put the four files
  $FILES
(.gz or plain) from https://github.com/zalandoresearch/fashion-mnist into data/fashion-mnist/.
MSG
exit 1
