"""Minimize a fuzz target's committed corpus, folding in new inputs:

    python3 fuzz/min_corpus.py BINARY CORPUS_DIR [NEW_DIR...] [--max-files N]

Runs the fuzz target BINARY (built by `cargo fuzz build`) in libFuzzer's
merge mode over CORPUS_DIR and the NEW_DIRs to learn which code each input
reaches, then keeps a small set of inputs that reaches all of it (greedy set
cover, small inputs preferred), at most N files (default 300). The named
seeds (files whose name is not a 40-digit hash, written by make_seeds.py)
are always kept. CORPUS_DIR is replaced by the result. `make fuzz-cmin`
runs this for every target.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile


def main(argv):
    args = argv[1:]
    max_files = 300
    if "--max-files" in args:
        i = args.index("--max-files")
        max_files = int(args[i + 1])
        del args[i : i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    binary, corpus, new = args[0], args[1], [d for d in args[2:] if os.path.isdir(d)]
    with tempfile.TemporaryDirectory() as tmp:
        ctl, out = os.path.join(tmp, "control"), os.path.join(tmp, "out")
        os.mkdir(out)
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", f"-merge_control_file={ctl}",
             "-max_len=1048576", "-rss_limit_mb=2048", "-timeout=10", out, corpus, *new],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines = open(ctl).read().split("\n")
        n = int(lines[0])
        files = lines[2 : 2 + n]
        cov = {i: set() for i in range(n)}
        for line in lines[2 + n :]:
            p = line.split()
            if p and p[0] == "COV":
                cov[int(p[1])] = set(map(int, p[2:]))
        size = {i: os.path.getsize(f) for i, f in enumerate(files)}
        universe = set().union(*cov.values())
        named = [i for i, f in enumerate(files)
                 if os.path.dirname(f) == corpus.rstrip("/")
                 and not re.fullmatch(r"[0-9a-f]{40}", os.path.basename(f))]
        chosen = list(named)
        covered = set().union(*(cov[i] for i in chosen))
        while covered != universe and len(chosen) < max_files:
            best = max(cov, key=lambda i: len(cov[i] - covered) / (1 + size[i] / 2048))
            if not cov[best] - covered:
                break
            chosen.append(best)
            covered |= cov[best]
        keep = os.path.join(tmp, "keep")
        os.mkdir(keep)
        for i in chosen:
            shutil.copy(files[i], keep)
        shutil.rmtree(corpus)
        shutil.copytree(keep, corpus)
    print(f"{corpus}: {len(chosen)} files, {sum(size[i] for i in chosen)} bytes, "
          f"reaching {len(covered)} of {len(universe)} PCs")


if __name__ == "__main__":
    main(sys.argv)
