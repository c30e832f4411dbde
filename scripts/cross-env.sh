# Shared setup of the ARM cross toolchains (sourced by cross-test.sh and cross-build.sh).
#
# cross_setup TARGET...  installs Debian's cross gcc + qemu-user, then per target either the
#                        rustup std (`rustup target add`) or, when the mirror refuses it (it
#                        has no std for the ARMv6 targets), rust-src to build std from source;
#                        for arm-unknown-linux-musleabihf also zig (PyPI `ziglang`), whose
#                        musl is compiled for the ARM1176 (see scripts/zig-cc-armv6).
# cross_cargo TARGET ARGS...  runs cargo for TARGET, adding -Zbuild-std where needed.
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

cross_cargo() {
  local t=$1 sub=$2
  shift 2
  if [[ -n ${CROSS_BUILD_STD[$t]:-} ]]; then
    RUSTC_BOOTSTRAP=1 cargo "$sub" --target "$t" -Zbuild-std=std,panic_abort,panic_unwind "$@"
  else
    cargo "$sub" --target "$t" "$@"
  fi
}

cross_runner() {
  awk -v t="[target.$1]" '$0 == t {f=1; next} /^\[/ {f=0} f && /^runner/ {sub(/^runner *= *"/, ""); sub(/"$/, ""); print}' .cargo/config.toml
}
