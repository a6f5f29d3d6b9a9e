"""Benchmark: GroundingDataModule metadata loading for 10k records (target < 2 s), plus image-check throughput.

    python -m benchmarks.data_loading [--records 10000] [--images 300]

Prints one line per figure. The metadata figure is ``setup("fit")`` with ``check_images=False`` (JSON parsing,
schema checks, HF ``Dataset.from_list``), measured after ``import datasets`` so the one-off import
cost (printed separately) does not hide the per-file cost.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_records(folder: str, n: int, image: str = "img.jpg", size: tuple[int, int] = (224, 224)) -> str:
    path = os.path.join(folder, "train.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            x = (i * 7) % 150
            f.write(json.dumps({"id": f"r{i}", "image": image if "{}" not in image else image.format(i),
                                "query": f"the lesion number {i % 97}", "bbox": [x, 10.5, x + 40.25, 90.0],
                                "width": size[0], "height": size[1], "dataset": "bench", "label": "mel"}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=300, help="images decoded for the image-check figure")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import datasets  # noqa: F401

    from medloc_lightning.data import GroundingDataModule
    print(f"import datasets + medloc_lightning.data.datamodule: {time.perf_counter() - t0:.2f} s (one-off)")

    with tempfile.TemporaryDirectory() as tmp:
        path = write_records(tmp, args.records)
        best = float("inf")
        for _ in range(3):
            dm = GroundingDataModule(train_file=path, check_images=False)
            t0 = time.perf_counter()
            dm.setup("fit")
            best = min(best, time.perf_counter() - t0)
        assert len(dm.datasets["train"]) == args.records
        print(f"metadata load, {args.records} records, check_images=False: {best:.3f} s (best of 3; target < 2 s)")

        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(os.path.join(tmp, f"{i}.jpg"))
        path = write_records(tmp, args.images, image="{}.jpg")
        dm = GroundingDataModule(train_file=path, check_images=True)
        t0 = time.perf_counter()
        dm.setup("fit")
        elapsed = time.perf_counter() - t0
        print(f"setup with image checks (full decode), {args.images} JPEGs 224x224: {elapsed:.3f} s "
              f"({args.images / elapsed:.0f} images/s)")
        ds = dm.datasets["train"]
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        elapsed = time.perf_counter() - t0
        print(f"__getitem__ (decode + RGB), {len(ds)} JPEGs 224x224: {1000 * elapsed / len(ds):.2f} ms/record")


if __name__ == "__main__":
    main()
