#!/bin/sh
# Before azd packages the api service: `make package` builds dist/azure-functionapp.zip from
# the hash-locked requirements and checks every handler from the unpacked zip; azd then
# zips dist/azure, the same files, for the Flex Consumption deployment container.
set -eu
make package
rm -rf dist/azure
mkdir -p dist/azure
python3 -m zipfile -e dist/azure-functionapp.zip dist/azure
touch dist/azure/.gitkeep
