"""Bucket settings, which tensorstore does not do: create a run's bucket (or folder), expire tmp
data, open the viewing bucket to the public and close it again. Through google-cloud-storage and
boto3, imported on use; S3-compatible stores: ``AWS_ENDPOINT_URL``, GCS emulators:
``STORAGE_EMULATOR_HOST``. A bucket's contents (sizes, deletion, archiving): ``bucket_contents``.
"""

from __future__ import annotations

import json
from pathlib import Path

from emprocess.storage.bucket_errors import bucket_errors, refuse_folders, s3_error_code
from emprocess.storage.confinement import allowed
from emprocess.storage.urls import Url

CORS_RULE = {"origins": ["*"], "methods": ["GET", "HEAD"], "headers": ["Range", "Content-Type"], "max_age": 3600}
# CORS_RULE as each API writes it
_GCS_CORS_RULE = {"origin": CORS_RULE["origins"], "method": CORS_RULE["methods"],
                  "responseHeader": CORS_RULE["headers"], "maxAgeSeconds": CORS_RULE["max_age"]}
_S3_CORS_RULE = {"AllowedOrigins": CORS_RULE["origins"], "AllowedMethods": CORS_RULE["methods"],
                 "AllowedHeaders": CORS_RULE["headers"], "MaxAgeSeconds": CORS_RULE["max_age"]}
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


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
    """Public read and CORS for the viewing bucket, so neuroglancer can load it from any origin; the
    bucket's other CORS rules stay."""
    u = allowed(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client().get_bucket(u.bucket)
        if _GCS_CORS_RULE not in bucket.cors:
            bucket.cors = [*bucket.cors, _GCS_CORS_RULE]
            bucket.patch()
        policy = bucket.get_iam_policy(requested_policy_version=3)
        public_read = {"role": "roles/storage.objectViewer", "members": {"allUsers"}}
        if not any(b["role"] == public_read["role"] and "allUsers" in b["members"] for b in policy.bindings):
            policy.bindings.append(public_read)
            bucket.set_iam_policy(policy)
    elif u.scheme == "s3":
        import boto3

        s3 = boto3.client("s3")
        other_rules = [rule for rule in _s3_cors_rules(s3, u.bucket) if not _is_our_s3_cors_rule(rule)]
        s3.put_bucket_cors(Bucket=u.bucket, CORSConfiguration={"CORSRules": [*other_rules, _S3_CORS_RULE]})
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


def make_private(url: str | Url) -> None:
    """Undo ``make_public``: no public read, no CORS rule of ours. GCS: ``allUsers`` and
    ``allAuthenticatedUsers`` leave every IAM binding; S3: the policy's public statements go (the
    policy with them when nothing else is left) and the public access block is whole again. Other
    CORS rules and policy statements stay."""
    u = refuse_folders(url, "public access")
    with bucket_errors(u):
        if u.scheme == "gs":
            _make_gcs_private(u.bucket)
        else:
            _make_s3_private(u.bucket)


def _make_gcs_private(name: str) -> None:
    from google.cloud import storage as gcs

    bucket = gcs.Client().get_bucket(name)
    if _GCS_CORS_RULE in bucket.cors:
        bucket.cors = [rule for rule in bucket.cors if rule != _GCS_CORS_RULE]
        bucket.patch()
    policy = bucket.get_iam_policy(requested_policy_version=3)
    if any(set(PUBLIC_MEMBERS) & set(binding["members"]) for binding in policy.bindings):
        bindings = [dict(binding, members=set(binding["members"]) - set(PUBLIC_MEMBERS)) for binding in policy.bindings]
        policy.bindings = [binding for binding in bindings if binding["members"]]
        bucket.set_iam_policy(policy)


def _make_s3_private(name: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    try:
        statements = json.loads(s3.get_bucket_policy(Bucket=name)["Policy"]).get("Statement", [])
    except Exception as err:
        if s3_error_code(err) != "NoSuchBucketPolicy":
            raise
        statements = []
    kept = [statement for statement in statements if not _is_public_statement(statement)]
    if len(kept) != len(statements):
        if kept:
            s3.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": kept}))
        else:
            s3.delete_bucket_policy(Bucket=name)
    rules = _s3_cors_rules(s3, name)
    other_rules = [rule for rule in rules if not _is_our_s3_cors_rule(rule)]
    if len(other_rules) != len(rules):
        if other_rules:
            s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": other_rules})
        else:
            s3.delete_bucket_cors(Bucket=name)
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})


def _s3_cors_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    except Exception as err:
        if s3_error_code(err) == "NoSuchCORSConfiguration":
            return []
        raise


def _is_our_s3_cors_rule(rule: dict) -> bool:
    """``rule`` is the one ``make_public`` sets (compared on the fields it sets: a rule may have more,
    such as an ID)."""
    return {key: rule.get(key) for key in _S3_CORS_RULE} == _S3_CORS_RULE


def _is_public_statement(statement: dict) -> bool:
    principal = statement.get("Principal")
    return statement.get("Effect") == "Allow" and (principal == "*" or principal == {"AWS": "*"}
                                                   or principal == {"AWS": ["*"]})
