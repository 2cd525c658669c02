#!/bin/sh
# OpenCV's wheel bundles a whole OpenBLAS (~39 MB) for the 20 or so BLAS and LAPACK functions cv2
# calls (cblas_*gemm, *gesv_, *gesdd_, ...), beside the OpenBLAS that scipy's wheel ships with the
# same LP64 interface under prefixed names (scipy_cblas_sgemm, ...). Replace OpenCV's copy by a
# small library of that file name whose every function cv2 imports from it jumps to scipy's
# (a tail jump, so arguments pass through untouched); docker/runtime_check.py then checks cv2's
# linear algebra against numpy's on random matrices.
#
#   sh docker/share_blas.sh /opt/venv     (needs binutils: nm, as, ld)
set -eu
site="$(echo "$1"/lib/python3.*/site-packages)"
cvlibs="$site/opencv_python_headless.libs"
cvblas="$(echo "$cvlibs"/libopenblas*.so)"
scipyblas="$(echo "$site"/scipy.libs/libscipy_openblas*.so)"
[ -f "$cvblas" ] && [ -f "$scipyblas" ] || { echo "share_blas: no OpenBLAS pair in $site" >&2; exit 1; }
work="$(mktemp -d)"

# What cv2 (or another library of OpenCV's wheel) imports from its OpenBLAS.
for f in "$site"/cv2/*.so "$cvlibs"/*.so*; do
  [ "$f" = "$cvblas" ] || nm -D --undefined-only "$f" | awk '{print $2}'
done | sort -u > "$work/imported"
nm -D --defined-only "$cvblas" | awk '{print $3}' | sort -u > "$work/cv_defined"
nm -D --defined-only "$scipyblas" | awk '{print $3}' | sort -u > "$work/scipy_defined"
comm -12 "$work/imported" "$work/cv_defined" > "$work/needed"
[ -s "$work/needed" ] || { echo "share_blas: cv2 imports nothing from $cvblas" >&2; exit 1; }

{
  echo '.section .note.GNU-stack,"",@progbits'
  echo '.text'
  while read -r s; do
    grep -qx "scipy_$s" "$work/scipy_defined" \
      || { echo "share_blas: scipy's OpenBLAS has no scipy_$s" >&2; exit 1; }
    printf '.globl %s\n.type %s,@function\n%s:\n  jmp scipy_%s@PLT\n' "$s" "$s" "$s" "$s"
  done < "$work/needed"
} > "$work/shim.s"
as -o "$work/shim.o" "$work/shim.s"
ld -shared -soname "$(basename "$cvblas")" -o "$work/shim.so" "$work/shim.o" \
   -L "$(dirname "$scipyblas")" -l:"$(basename "$scipyblas")" \
   -rpath '$ORIGIN/../scipy.libs' -rpath-link "$(dirname "$scipyblas")"
before=$(du -sk "$cvblas" | cut -f1)
mv "$work/shim.so" "$cvblas"

echo "share_blas: $(wc -l < "$work/needed") functions of $(basename "$cvblas") ($before kB) now jump to $(basename "$scipyblas")"
rm -rf "$work"
