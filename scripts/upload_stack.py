"""Copy a local folder of slices to a bucket (gs:// or s3://) through emprocess.storage.

    python scripts/upload_stack.py /data/stack gs://my-em-bucket --pattern "*.png"
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emprocess import storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("destination", help="bucket URL, e.g. gs://bucket or s3://bucket")
    parser.add_argument("--pattern", default="*")
    parser.add_argument("--project", help="GCP project, if the bucket must be created")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    files = sorted(p for p in args.folder.glob(args.pattern) if p.is_file())
    storage.ensure_location(args.destination, project=args.project)
    with ThreadPoolExecutor(args.threads) as pool:
        def copy(path: Path) -> str:
            storage.write(storage.join(args.destination, path.name), path.read_bytes())
            return path.name

        for name in pool.map(copy, files):
            print(name)
    print(f"{len(files)} files copied to {args.destination}")


if __name__ == "__main__":
    main()
