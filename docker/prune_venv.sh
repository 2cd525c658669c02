#!/bin/sh
# Remove from a built venv what the service never loads at run time (run in the Dockerfile's builder
# stages, before the runtime stage copies the venv; docker/runtime_check.py then proves, in the
# runtime stage, that every feature still runs):
#   - test suites of the installed packages, pip/setuptools/wheel (nothing installs at run
#     time), and networkx (scikit-image's graph module needs it; the service uses only skimage.data);
#   - debug symbols of the Python extension modules (strip --strip-unneeded keeps the dynamic symbols;
#     the vendored libraries in *.libs/ are left alone: auditwheel rewrote them with patchelf);
#   - scikit-image except what `skimage.data` imports (models/motion/stimuli.py, the only user of
#     scikit-image, loads its bundled stills through skimage.data -> skimage.io -> imageio -> Pillow),
#     and the bundled data files that are not stills of stimuli.STILL_NAMES;
#   - fontTools except fontTools.misc and fontTools.agl: matplotlib imports the rest (subset, ttLib)
#     only to embed fonts in PDF and PostScript files; the image draws PNG only (Agg), and its
#     command-line tools (ttx, pyftsubset, ...), which need the rest, go too, and so do the Cython C
#     sources the wheel ships beside its compiled modules;
#   - OpenCV's Haar cascades (cv2/data/*.xml: face detection, never used), matplotlib's sample data,
#     numpy's C headers and static libraries (build-time files);
#   - Pillow's optional modules (AVIF and WebP codecs, fonts, colour management, ImageMath,
#     ImageMorph, Tk), loaded only by PIL.ImageFont, ImageCms, ... or to read or write AVIF and WebP
#     files, none of which the service does (matplotlib draws text with its own FreeType, and OpenCV
#     has its own codecs), then the vendored libraries in pillow.libs that only they loaded (FreeType,
#     HarfBuzz, Brotli, lcms2, libwebp, ...), and in OpenCV's libraries the Fortran runtime only its
#     OpenBLAS loaded (docker/share_blas.sh); numpy's _simd module (SIMD checks for numpy's tests);
#   - scipy's subpackages the service never imports (stats, signal, interpolate, integrate, odr,
#     cluster, ...: ~24 MB). Those the models use (optimize, sparse, special, linalg, and io and
#     ndimage, imported inside functions) stay with what they import; from them only
#     differential_evolution and shgo (scipy.stats.qmc) and spatial's RotationSpline
#     (scipy.interpolate) reach a removed one, inside functions nothing here calls;
#   - Numba's CUDA target (no GPU here; `import numba` never loads it), the tzdata package (the
#     base's /usr/share/zoneinfo serves zoneinfo), matplotlib's DejaVu Serif fonts (the figures use
#     its default, DejaVu Sans; math text, as in log-scale tick labels, falls back to the Computer
#     Modern and STIX fonts, which stay) and its PDF/PostScript core font metrics;
#   - copies of one vendored library in several wheels (numpy.libs, scipy.libs and OpenCV's carry the
#     same libgfortran and libquadmath builds): byte-identical files become hard links.
#
#   sh docker/prune_venv.sh /opt/venv
set -eu
venv="$1"
site="$(echo "$venv"/lib/python3.*/site-packages)"
before=$(du -sm "$venv" | cut -f1)

find "$site" -depth -type d \( -name tests -o -name test -o -name testing_data \) \
  -not -path "*/numpy/testing*" -exec rm -rf {} +
rm -rf "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* "$site"/_distutils_hack \
       "$site"/distutils-precedence.pth "$site"/wheel "$site"/wheel-* \
       "$site"/networkx "$site"/networkx-* \
       "$venv"/bin/pip "$venv"/bin/pip3*

find "$site" -type f -name "*.so*" -not -path "*.libs/*" -exec strip --strip-unneeded {} +

# scikit-image: the package's __init__ (with the __init__.pyi that lazy_loader reads) and the
# subpackages `import skimage.data` and its loaders import; the others (filters, feature, measure,
# transform, ...: 20 MB) go. Then the data files no still of STILL_NAMES is read from.
for d in "$site"/skimage/*/; do
  case "$(basename "$d")" in
    _shared | _vendored | color | data | exposure | io | util | __pycache__) ;;
    *) rm -rf "$d" ;;
  esac
done
rm -f "$site"/skimage/data/lfw_subset.npy "$site"/skimage/data/motorcycle_* \
      "$site"/skimage/data/lbpcascade_frontalface_opencv.xml "$site"/skimage/data/clock_motion.png \
      "$site"/skimage/data/color.png "$site"/skimage/data/logo.png "$site"/skimage/data/retina.jpg

# fontTools: keep the package's __init__, agl and misc (what matplotlib's PNG path imports).
for p in "$site"/fontTools/*; do
  case "$(basename "$p")" in
    __init__.py | agl.py | misc | __pycache__) ;;
    *) rm -rf "$p" ;;
  esac
done
find "$site"/fontTools/__pycache__ -type f -not -name "__init__.*" -not -name "agl.*" -delete
rm -f "$venv"/bin/fonttools "$venv"/bin/pyftmerge "$venv"/bin/pyftsubset "$venv"/bin/ttx
find "$site"/fontTools -name "*.c" -delete

rm -f "$site"/cv2/data/*.xml
rm -rf "$site"/matplotlib/mpl-data/sample_data
rm -rf "$site"/numpy/_core/include "$site"/numpy/_core/lib/*.a
rm -f "$site"/PIL/_avif.* "$site"/PIL/_webp.* "$site"/PIL/_imagingft.* "$site"/PIL/_imagingcms.* \
      "$site"/PIL/_imagingmath.* "$site"/PIL/_imagingmorph.* "$site"/PIL/_imagingtk.* \
      "$site"/numpy/_core/_simd.*
# pillow.libs and OpenCV's libraries: keep what the remaining modules load, directly or through
# another library there (after docker/share_blas.sh, OpenCV's Fortran runtime is nobody's).
pruned="pillow.libs opencv_python_headless.libs"
needed() { readelf -d "$@" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
reach="$(mktemp)"
find "$site" -type f -name "*.so*" -not -path "*.libs/*" -exec sh -c 'readelf -d "$@" 2>/dev/null' sh {} + \
  | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u > "$reach"
while :; do
  more="$(while read -r n; do
            for d in $pruned; do [ ! -f "$site/$d/$n" ] || needed "$site/$d/$n"; done
          done < "$reach" | sort -u | comm -13 "$reach" -)"
  [ -n "$more" ] || break
  printf '%s\n' "$more" >> "$reach" && sort -u -o "$reach" "$reach"
done
for d in $pruned; do
  for lib in "$site/$d"/*; do grep -qxF "$(basename "$lib")" "$reach" || rm -f "$lib"; done
done
rm -f "$reach"

# scipy: keep what scipy.optimize, sparse, special, linalg (and io, ndimage) import; see the header.
for d in "$site"/scipy/*/; do
  case "$(basename "$d")" in
    _external | _lib | __pycache__ | constants | fft | io | linalg | ndimage | optimize | sparse | spatial | special) ;;
    *) rm -rf "$d" ;;
  esac
done
rm -rf "$site"/numba/cuda "$site"/tzdata "$site"/tzdata-*
fonts="$site"/matplotlib/mpl-data/fonts
rm -rf "$fonts"/afm "$fonts"/pdfcorefonts "$fonts"/ttf/DejaVuSerif*

# Byte-identical vendored libraries: one copy, hard-linked into each *.libs folder.
find "$site" -path "*.libs/*" -type f -exec sha256sum {} + | sort \
  | awk '$1 == sum { print first, $2; next } { sum = $1; first = $2 }' \
  | while read -r keep dup; do ln -f "$keep" "$dup"; done

echo "prune_venv: $venv $before MB -> $(du -sm "$venv" | cut -f1) MB"
