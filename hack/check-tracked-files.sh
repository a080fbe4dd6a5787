#!/usr/bin/env bash
# Fails when git tracks a file that does not belong in the repository: one
# over 1 MiB, or a binary (compiled programs, .pyc files, archives: anything
# git itself takes for binary). Built things go to bin/, which is ignored.
# Run from anywhere inside the repository; make verify runs it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

limit=$((1 << 20))
failed=0
empty_tree=$(git hash-object -t tree /dev/null)

# Sizes and contents as staged: what the next commit would hold.
while read -r mode object stage path; do
	[[ "${mode}" == 160000 ]] && continue # a submodule
	size=$(git cat-file -s "${object}")
	if ((size > limit)); then
		echo "check-tracked-files: ${path} is ${size} bytes; nothing over 1 MiB belongs in the repository" >&2
		failed=1
	fi
done < <(git ls-files --stage)

# git diff --numstat shows "-	-" for the files it takes for binary.
while IFS=$'\t' read -r added removed path; do
	if [[ "${added}" == - && "${removed}" == - ]]; then
		echo "check-tracked-files: ${path} is a binary file; build into bin/ instead of committing the result" >&2
		failed=1
	fi
done < <(git diff --cached --numstat --no-renames "${empty_tree}")

if ((failed)); then
	exit 1
fi
echo "check-tracked-files: no binary and nothing over 1 MiB is tracked"
