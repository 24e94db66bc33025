"""The dataset registry: what a raw-layout path says about its image."""

from pfanet_cli.data.datasets import identity_from_path


def test_identity_from_path_reads_sysu_and_regdb_layouts():
    assert identity_from_path("cam3/0006/0001.jpg") == (6, 3, "ir", "sysu")
    assert identity_from_path("x/cam5/0012/0003.jpg") == (12, 5, "rgb", "sysu")
    assert identity_from_path("Thermal/7/a_t_1.bmp") == (7, 2, "ir", "regdb")
    assert identity_from_path("Visible/7/a_v_1.bmp") == (7, 1, "rgb", "regdb")
    assert identity_from_path("people/a.jpg") == (-1, -1, None, None)
