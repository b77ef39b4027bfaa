"""The ``admin`` and ``runs`` command groups; each module below adds its own commands."""

from __future__ import annotations


def add_commands(sub) -> None:
    from emprocess.admin import buckets, deploy_cloudrun, deploy_composer, renumber, run_name, runs

    admin = sub.add_parser("admin", help="deploy the workflow, administer buckets, renumber a stack, "
                                         "name a run").add_subparsers(dest="admin_command", required=True)
    deploy = admin.add_parser("deploy", help="deploy to Google Cloud (Cloud Composer 3, Cloud Run)")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    deploy_composer.add_parser(deploy_sub)
    deploy_cloudrun.add_parser(deploy_sub)
    bucket = admin.add_parser("bucket", help="delete, archive, open or close a bucket (gs://, s3://, file://)")
    buckets.add_parsers(bucket.add_subparsers(dest="bucket_command", required=True))
    renumber.add_parser(admin)
    run_name.add_parser(admin)
    runs_group = sub.add_parser("runs", help="a source's runs: list them with their sizes, delete one")
    runs.add_parsers(runs_group.add_subparsers(dest="runs_command", required=True))
