#!/bin/sh
# Joins the benchmark parts into one report:
#   scripts/bench-report.sh DIR bench-capture bench-storage ...
# reads DIR/capture.md and DIR/capture.json (the target name without
# "bench-") for each, in order, and writes DIR/report.md (the parts one
# after the other) and DIR/report.json ({"capture": {...}, ...}).
set -eu
dir=$1
shift
md=$dir/report.md
json=$dir/report.json
: >"$md.tmp"
printf '{' >"$json.tmp"
separator=''
for target in "$@"; do
	name=${target#bench-}
	for ext in md json; do
		if [ ! -s "$dir/$name.$ext" ]; then
			echo "bench-report: $dir/$name.$ext is missing or empty" >&2
			exit 1
		fi
	done
	cat "$dir/$name.md" >>"$md.tmp"
	printf '%s\n"%s": ' "$separator" "$name" >>"$json.tmp"
	cat "$dir/$name.json" >>"$json.tmp"
	separator=','
done
printf '}\n' >>"$json.tmp"
mv "$md.tmp" "$md"
mv "$json.tmp" "$json"
echo "wrote $md and $json"
