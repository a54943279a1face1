# Sourced by the fetch scripts: download a pinned file once and check its sha256.
#   fetch_verified LABEL URL FILE SHA256
# A file already there with the right hash is kept; a wrong one is fetched again; a download
# with another hash is removed and the script fails, naming both hashes.
fetch_verified() {
  local label=$1 url=$2 file=$3 sha=$4 got
  mkdir -p "$(dirname "$file")"
  if [ ! -f "$file" ] || [ "$(sha256sum "$file" | cut -d' ' -f1)" != "$sha" ]; then
    echo "$label: downloading $(basename "$file")"
    if command -v curl >/dev/null; then
      curl -fsSL --retry 3 -o "$file.part" "$url"
    else
      python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$file.part"
    fi
    mv "$file.part" "$file"
  fi
  got=$(sha256sum "$file" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "$label: sha256 mismatch for $file: got $got, pinned $sha" >&2
    rm -f "$file"
    return 1
  fi
}
