"""source.schema parsing and the one schema object's mappings to Arrow, Iceberg, Paimon and Beam."""

import typing
from decimal import Decimal

import apache_beam as beam
import pyarrow as pa
import pytest
from pyiceberg import types as it

from beam_pixels.schema import ColumnType, SchemaError, SourceSchema, TypeKind, parse_type

SEED_TYPES = {
    "INT": (TypeKind.INT, pa.int32(), it.IntegerType(), "INT"),
    "BIGINT": (TypeKind.BIGINT, pa.int64(), it.LongType(), "BIGINT"),
    "FLOAT": (TypeKind.FLOAT, pa.float32(), it.FloatType(), "FLOAT"),
    "DOUBLE": (TypeKind.DOUBLE, pa.float64(), it.DoubleType(), "DOUBLE"),
    "DECIMAL(12,3)": (TypeKind.DECIMAL, pa.decimal128(12, 3), it.DecimalType(12, 3), "DECIMAL(12, 3)"),
    "DECIMAL(38,10)": (TypeKind.DECIMAL, pa.decimal128(38, 10), it.DecimalType(38, 10), "DECIMAL(38, 10)"),
    "STRING": (TypeKind.STRING, pa.string(), it.StringType(), "STRING"),
    "VARCHAR(20)": (TypeKind.VARCHAR, pa.string(), it.StringType(), "VARCHAR(20)"),
    "CHAR(4)": (TypeKind.CHAR, pa.string(), it.StringType(), "CHAR(4)"),
    "BINARY": (TypeKind.BINARY, pa.binary(), it.BinaryType(), "BYTES"),
    "VARBINARY": (TypeKind.VARBINARY, pa.binary(), it.BinaryType(), "BYTES"),
    "FIXED(16)": (TypeKind.FIXED, pa.binary(16), it.FixedType(16), "BINARY(16)"),
    "DATE": (TypeKind.DATE, pa.date32(), it.DateType(), "DATE"),
    "TIME": (TypeKind.TIME, pa.time32("ms"), it.TimeType(), "TIME(3)"),
    "TIMESTAMP": (TypeKind.TIMESTAMP, pa.timestamp("us"), it.TimestampType(), "TIMESTAMP(6)"),
    "TIMESTAMPTZ": (TypeKind.TIMESTAMPTZ, pa.timestamp("us", tz="UTC"), it.TimestamptzType(), "TIMESTAMP_LTZ(6)"),
    "BOOLEAN": (TypeKind.BOOLEAN, pa.bool_(), it.BooleanType(), "BOOLEAN"),
    "TINYINT": (TypeKind.TINYINT, pa.int8(), it.IntegerType(), "TINYINT"),
    "SMALLINT": (TypeKind.SMALLINT, pa.int16(), it.IntegerType(), "SMALLINT"),
}


@pytest.mark.parametrize("token", SEED_TYPES)
def test_every_type_maps_to_arrow_iceberg_and_paimon(token):
    kind, arrow, iceberg, paimon = SEED_TYPES[token]
    parsed = parse_type(token)
    assert (parsed.kind, parsed.to_arrow(), parsed.to_iceberg(), parsed.to_paimon()) == (kind, arrow, iceberg, paimon)


@pytest.mark.parametrize(
    "token, expected",
    [
        ("INTEGER", ColumnType(TypeKind.INT)),
        ("LONG", ColumnType(TypeKind.BIGINT)),
        ("BOOL", ColumnType(TypeKind.BOOLEAN)),
        ("TIMESTAMP_LTZ", ColumnType(TypeKind.TIMESTAMPTZ)),
        ("DECIMAL", ColumnType(TypeKind.DECIMAL, precision=10, scale=0)),
        ("CHAR", ColumnType(TypeKind.CHAR, length=1)),
        ("VARCHAR", ColumnType(TypeKind.VARCHAR)),
        ("decimal( 18 , 2 )", ColumnType(TypeKind.DECIMAL, precision=18, scale=2)),
        ("  varchar ( 5 ) ", ColumnType(TypeKind.VARCHAR, length=5)),
    ],
)
def test_seed_aliases_case_and_spaces(token, expected):
    assert parse_type(token) == expected


def test_decimal_wire_width_follows_precision():
    assert parse_type("DECIMAL(18,2)").wire_width == 8
    assert parse_type("DECIMAL(19,2)").wire_width == 16
    assert parse_type("FIXED(5)").wire_width == 5
    assert parse_type("STRING").wire_width is None


def test_a_schema_with_commas_inside_parentheses_and_a_composite_key():
    schema = SourceSchema.parse(" id : bigint , price:DECIMAL(10, 2),code:fixed(3), name:varchar(8) ,", ["ID", "code"])
    assert schema.names == ["id", "price", "code", "name"]
    assert schema.primary_key == ("id", "code")
    assert str(schema) == "id:BIGINT,price:DECIMAL(10,2),code:FIXED(3),name:VARCHAR(8)"
    arrow = schema.to_arrow()
    assert [f.nullable for f in arrow] == [False, True, False, True]
    iceberg = schema.to_iceberg()
    assert iceberg.identifier_field_names() == {"id", "code"}
    assert [f.field_id for f in iceberg.fields] == [1, 2, 3, 4]


def test_beam_row_type_gives_rows_beam_can_encode_with_a_schema():
    schema = SourceSchema.parse("id:BIGINT,price:DECIMAL(10,2),name:STRING", ["id"])
    row_type = schema.beam_row_type()
    assert row_type.__annotations__ == {
        "id": typing.Optional[int],
        "price": typing.Optional[Decimal],
        "name": typing.Optional[str],
    }
    coder = beam.coders.RowCoder.from_type_hint(row_type, None)
    row = row_type(id=1, price=Decimal("9.99"), name=None)
    assert coder.decode(coder.encode(row)) == row


@pytest.mark.parametrize(
    "spec, key, fragments",
    [
        ("id:INT,name", (), ["column 2", "'name'", "name:TYPE", "BIGINT"]),
        ("id:INTEGR", (), ["column 1", "'id'", "INTEGR", "accepted types"]),
        ("id:DECIMAL(40,2)", (), ["'id'", "DECIMAL(40,2)", "1 <= P <= 38"]),
        ("id:DECIMAL(5,6)", (), ["0 <= S <= P"]),
        ("id:FIXED", (), ["FIXED needs a length"]),
        ("id:INT(4)", (), ["INT takes no parameter"]),
        ("id:VARCHAR(0)", (), ["at least 1"]),
        ("1id:INT", (), ["'1id'", "letters, digits"]),
        ("id:INT,ID:STRING", (), ["twice"]),
        ("", (), ["empty"]),
        ("id:INT", ("nope",), ["'nope'", "columns are: id"]),
        ("id:INT", ("id", "ID"), ["twice"]),
    ],
)
def test_a_bad_spec_names_the_column_the_token_and_what_is_accepted(spec, key, fragments):
    with pytest.raises(SchemaError) as error:
        SourceSchema.parse(spec, key)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
