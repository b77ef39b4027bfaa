"""Bucket administration, which tensorstore does not do: create a run's bucket (or folder), expire
tmp data, open the viewing bucket to the public. Through google-cloud-storage and boto3, imported on
use; S3-compatible stores: ``AWS_ENDPOINT_URL``, GCS emulators: ``STORAGE_EMULATOR_HOST``.
"""

from __future__ import annotations

import json
from pathlib import Path

from emprocess.storage.confinement import allowed
from emprocess.storage.urls import Url

CORS_RULE = {"origins": ["*"], "methods": ["GET", "HEAD"], "headers": ["Range", "Content-Type"], "max_age": 3600}


def ensure_location(url: str | Url, project: str | None = None) -> None:
    """Create the bucket (or folder) that holds ``url`` if it does not exist."""
    u = allowed(url)
    if u.scheme == "file":
        Path(u.path).mkdir(parents=True, exist_ok=True)
    elif u.scheme == "gs":
        from google.cloud import storage as gcs

        client = gcs.Client(project=project)
        if client.lookup_bucket(u.bucket) is None:
            client.create_bucket(u.bucket, project=project)
    else:
        import boto3
        from botocore.exceptions import ClientError

        s3 = boto3.client("s3")
        try:
            s3.head_bucket(Bucket=u.bucket)
        except ClientError:
            region = s3.meta.region_name
            if region in (None, "us-east-1"):
                s3.create_bucket(Bucket=u.bucket)
            else:  # every other region must be named again here
                s3.create_bucket(Bucket=u.bucket, CreateBucketConfiguration={"LocationConstraint": region})


def set_expiry(url: str | Url, days: int) -> None:
    """Delete the bucket's objects ``days`` after creation (tmp data); folders are left to the user.
    The rule replaces the bucket's lifecycle rules, so a resumed run's publish adds none."""
    u = allowed(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client().get_bucket(u.bucket)
        bucket.clear_lifecycle_rules()
        bucket.add_lifecycle_delete_rule(age=days)
        bucket.patch()
    elif u.scheme == "s3":
        import boto3

        boto3.client("s3").put_bucket_lifecycle_configuration(
            Bucket=u.bucket,
            LifecycleConfiguration={
                "Rules": [{"ID": "emprocess-tmp", "Status": "Enabled", "Filter": {"Prefix": ""},
                           "Expiration": {"Days": days}}]
            },
        )


def make_public(url: str | Url) -> None:
    """Public read and CORS for the viewing bucket, so neuroglancer can load it from any origin."""
    u = allowed(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client().get_bucket(u.bucket)
        bucket.cors = [{"origin": CORS_RULE["origins"], "method": CORS_RULE["methods"],
                        "responseHeader": CORS_RULE["headers"], "maxAgeSeconds": CORS_RULE["max_age"]}]
        bucket.patch()
        policy = bucket.get_iam_policy(requested_policy_version=3)
        public_read = {"role": "roles/storage.objectViewer", "members": {"allUsers"}}
        if not any(b["role"] == public_read["role"] and "allUsers" in b["members"] for b in policy.bindings):
            policy.bindings.append(public_read)
            bucket.set_iam_policy(policy)
    elif u.scheme == "s3":
        import boto3

        s3 = boto3.client("s3")
        s3.put_bucket_cors(Bucket=u.bucket, CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": CORS_RULE["origins"], "AllowedMethods": CORS_RULE["methods"],
            "AllowedHeaders": CORS_RULE["headers"], "MaxAgeSeconds": CORS_RULE["max_age"]}]})
        # New buckets block public policies by default (AWS, since 2023): lift that for this bucket's
        # policy only; public ACLs stay blocked.
        s3.put_public_access_block(Bucket=u.bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False})
        s3.put_bucket_policy(Bucket=u.bucket, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": f"arn:aws:s3:::{u.bucket}/*"}],
        }))
