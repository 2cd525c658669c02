#!/bin/sh
# Remove from the base image's root file system what the service never reads at run time (run in the
# Dockerfile's `runtime-root` stage, whose file system the runtime images copy as one layer; the
# base's Python arrives there already stripped of its debug symbols, as the official python images
# link it, by the `python-stripped` stage):
#   - documentation, manual and info pages, translations of the system's programs (Debian's own slim
#     images leave them out too); each package's copyright file stays;
#   - the package manager (apt, its signature checker sqv, debconf, and perl-base, which only
#     debconf needed), purged with dpkg so that its database, which image scanners read, stays
#     true; nothing installs at run time (to add a system package, install it in the `runtime-root`
#     stage of the Dockerfile, before this script);
#   - glibc's character-set converters (gconv: iconv to legacy code pages; nothing here calls iconv,
#     and UTF-8 and Latin-1 are built into glibc);
#   - the base interpreter's pip and ensurepip (the service's venv has its own packages and nothing
#     installs at run time), IDLE, tkinter and turtledemo (no display), and CPython's C headers (no
#     compiler in the image).
#
#   sh docker/slim_base.sh
set -eu
before=$(du -smx / | cut -f1)

find /usr/share/doc -type f -not -name copyright -delete
find /usr/share/doc -depth -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/lintian /usr/share/linda
find /usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

dpkg --purge --force-remove-essential --force-depends apt sqv debconf perl-base \
  $(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'libapt-pkg*' | awk '$1 == "ii" { print $2 }')
rm -rf /var/cache/debconf /var/lib/apt /var/cache/apt /etc/apt
rm -rf /usr/lib/*-linux-gnu/gconv

lib="$(echo /usr/local/lib/python3.*)"
rm -rf "$lib"/site-packages/pip "$lib"/site-packages/pip-* "$lib"/ensurepip "$lib"/idlelib \
       "$lib"/tkinter "$lib"/turtledemo /usr/local/include/python3.* \
       /usr/local/bin/pip /usr/local/bin/pip3* /usr/local/bin/idle3*

echo "slim_base: / $before MB -> $(du -smx / | cut -f1) MB"
