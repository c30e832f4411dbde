# Shared setup of the ARM cross toolchains (sourced by cross-test.sh and cross-build.sh).
#
# cross_setup TARGET...  installs Debian's cross gcc + qemu-user, then per target either the
#                        rustup std (`rustup target add`) or, when the mirror refuses it (it
#                        has no std for the ARMv6 targets), rust-src to build std from source;
#                        for arm-unknown-linux-musleabihf also zig (PyPI `ziglang`), whose
#                        musl is compiled for the ARM1176 (see scripts/zig-cc-armv6).
# cross_cargo TARGET ARGS...  runs cargo for TARGET, adding -Zbuild-std where needed.
# cross_target_dir TARGET  the build directory cross_cargo uses for TARGET (artifacts are in
#                        its TARGET/ subdirectory).
# cross_runner TARGET    prints the qemu runner configured for TARGET.

ZIGLANG_VERSION=0.17.1

# C code in the tree (ring, under libp2p's Noise) must be compiled for the same core: Debian's
# arm-linux-gnueabihf-gcc defaults to ARMv7 + Thumb-2, which a Pi Zero cannot execute.
export CFLAGS_arm_unknown_linux_gnueabihf="-march=armv6+fp -mfpu=vfp -mfloat-abi=hard -marm"
export CC_arm_unknown_linux_musleabihf="$PWD/scripts/zig-cc-armv6"
export AR_arm_unknown_linux_musleabihf="$PWD/scripts/zig-ar"
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
declare -A CROSS_BUILD_STD=()

cross_setup() {
  local need=()
  command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null || need+=(qemu-user)
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
  command -v arm-linux-gnueabihf-gcc >/dev/null || need+=(gcc-arm-linux-gnueabihf)
  if ((${#need[@]})); then
    apt-get update -q && apt-get install -y -q "${need[@]}"
  fi
  local t
  for t in "$@"; do
    if ! rustup target list --installed | grep -qx "$t" && ! rustup target add "$t" 2>/dev/null; then
      echo "rustup has no prebuilt std for $t here: building std from rust-src (-Zbuild-std)"
      rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
      CROSS_BUILD_STD[$t]=1
    fi
    if [[ $t == arm-unknown-linux-musleabihf ]] && ! python3 -m ziglang version >/dev/null 2>&1; then
      pip install -q "ziglang==$ZIGLANG_VERSION"
    fi
  done
}

# A target whose std is built from source needs RUSTC_BOOTSTRAP=1, and build scripts that
# probe the compiler (proc-macro2's) fingerprint that variable: in a build directory shared
# with the other targets, every host proc-macro (syn, serde_derive, thiserror-impl…) was
# rebuilt at each switch between the two kinds, ~90 s a time, several times a CI run. Such
# targets get a build directory of their own.
cross_target_dir() {
  local base=${CARGO_TARGET_DIR:-target}
  if [[ -n ${CROSS_BUILD_STD[$1]:-} ]]; then
    echo "$base/build-std"
  else
    echo "$base"
  fi
}

cross_cargo() {
  local t=$1 sub=$2
  shift 2
  local dir
  dir=$(cross_target_dir "$t")
  if [[ -n ${CROSS_BUILD_STD[$t]:-} ]]; then
    CARGO_TARGET_DIR=$dir RUSTC_BOOTSTRAP=1 cargo "$sub" --target "$t" \
      -Zbuild-std=std,panic_abort,panic_unwind "$@"
  else
    CARGO_TARGET_DIR=$dir cargo "$sub" --target "$t" "$@"
  fi
}

cross_runner() {
  awk -v t="[target.$1]" '$0 == t {f=1; next} /^\[/ {f=0} f && /^runner/ {sub(/^runner *= *"/, ""); sub(/"$/, ""); print}' .cargo/config.toml
}
