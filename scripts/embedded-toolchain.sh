# Sourced by cross.sh and firmware.sh: defines `embedded_cargo TARGET ARGS...`, which runs
# `cargo build`-like commands for a bare-metal target with whichever toolchain can:
# the rustup toolchain when its target is installed, else Debian's rustc with the standard
# library sources (`rustc-web`, `rust-web-src`), building `core` from source (-Zbuild-std).

embedded_cargo() {
  local target=$1
  shift
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    cargo "$@" --target "$target"
  elif [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library/core ]; then
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo "$@" -Zbuild-std=core --target "$target"
  else
    echo "no toolchain for $target: run 'bash scripts/deps.sh' (Debian) or 'rustup target add $target'" >&2
    return 1
  fi
}

# How embedded_cargo builds for TARGET, for the log.
embedded_route() {
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$1"; then
    echo "rustup target $1 ($(rustc --version))"
  else
    echo "Debian rustc with -Zbuild-std=core ($(/usr/bin/rustc --version 2>/dev/null || echo missing))"
  fi
}
