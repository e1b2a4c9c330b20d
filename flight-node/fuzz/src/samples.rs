//! Small tables over many Arrow types: the seeds of `doput_decode` and the valid schema
//! messages it can start a stream with.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, BooleanArray, Date32Array, Decimal128Array,
    Decimal256Array, Decimal32Array, Decimal64Array, DictionaryArray, DurationMillisecondArray,
    FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, Int64Builder, Int8Array, IntervalMonthDayNanoArray, LargeListArray,
    LargeStringArray, ListArray, ListViewArray, MapBuilder, MapFieldNames, NullArray, RecordBatch,
    RunArray, StringArray, StringBuilder, StringViewArray, StructArray, TimestampMicrosecondArray,
    UInt16Array, UnionArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    i256, DataType, Field, Fields, Int32Type, Int8Type, IntervalMonthDayNano, Schema, SchemaRef,
    UInt16Type, UnionFields,
};
use arrow::error::ArrowError;
use arrow_flight::{FlightData, SchemaAsIpc};

/// A named sample table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

fn table(name: &'static str, batches: Vec<Vec<(&str, ArrayRef)>>) -> Result<Table, ArrowError> {
    let mut out = Vec::new();
    for columns in batches {
        out.push(RecordBatch::try_from_iter_with_nullable(
            columns.into_iter().map(|(n, a)| (n, a, true)),
        )?);
    }
    let schema = out
        .first()
        .map(RecordBatch::schema)
        .ok_or_else(|| ArrowError::InvalidArgumentError("a sample table has no batch".into()))?;
    Ok(Table {
        name,
        schema,
        batches: out,
    })
}

fn arc(a: impl Array + 'static) -> ArrayRef {
    Arc::new(a)
}

/// Every sample table. Errors only if arrow refuses one of them (a bug here).
pub fn tables() -> Result<Vec<Table>, ArrowError> {
    let mut t = vec![
        table(
            "basic",
            vec![
                vec![
                    ("id", arc(Int64Array::from(vec![1, 2, 3]))),
                    (
                        "s",
                        arc(StringArray::from(vec![Some("a"), None, Some("ccc")])),
                    ),
                ],
                vec![
                    ("id", arc(Int64Array::from(vec![4]))),
                    ("s", arc(StringArray::from(vec!["dd"]))),
                ],
            ],
        )?,
        table(
            "dictionary",
            vec![
                vec![(
                    "d",
                    arc(DictionaryArray::<Int32Type>::try_new(
                        Int32Array::from(vec![Some(0), None, Some(2), Some(0)]),
                        arc(StringArray::from(vec![Some("x"), Some("unused"), None])),
                    )?),
                )],
                vec![(
                    "d",
                    arc(DictionaryArray::<Int32Type>::try_new(
                        Int32Array::from(vec![1, 0]),
                        arc(StringArray::from(vec!["p", "q"])),
                    )?),
                )],
            ],
        )?,
        table("nested", vec![nested()?])?,
        table(
            "temporal",
            vec![vec![
                ("f", arc(Float64Array::from(vec![1.5, f64::NAN, -0.0]))),
                (
                    "b",
                    arc(BooleanArray::from(vec![Some(true), None, Some(false)])),
                ),
                ("d", arc(Date32Array::from(vec![0, 19000, -1]))),
                (
                    "ts",
                    arc(TimestampMicrosecondArray::from(vec![0, 1, i64::MAX]).with_timezone("UTC")),
                ),
                (
                    "dec",
                    arc(Decimal128Array::from(vec![12345, -1, 0])
                        .with_precision_and_scale(10, 2)?),
                ),
                ("dur", arc(DurationMillisecondArray::from(vec![1, 2, 3]))),
                (
                    "iv",
                    arc(IntervalMonthDayNanoArray::from(vec![
                        IntervalMonthDayNano::new(1, 2, 3),
                        IntervalMonthDayNano::new(0, 0, -1),
                        IntervalMonthDayNano::new(-1, 31, 0),
                    ])),
                ),
            ]],
        )?,
        table(
            "strings",
            vec![vec![
                ("ls", arc(LargeStringArray::from(vec!["a", "", "long"]))),
                (
                    "fsb",
                    arc(FixedSizeBinaryArray::try_from_iter(
                        vec![b"abcd", b"efgh", b"ijkl"].into_iter(),
                    )?),
                ),
                (
                    "sv",
                    arc(StringViewArray::from(vec![
                        Some("short"),
                        None,
                        Some("a string longer than twelve bytes"),
                    ])),
                ),
                (
                    "bv",
                    arc(BinaryViewArray::from(vec![
                        b"x".as_slice(),
                        b"".as_slice(),
                        b"binary view longer than twelve".as_slice(),
                    ])),
                ),
                (
                    "bin",
                    arc(BinaryArray::from(vec![
                        Some(b"\0\xff".as_slice()),
                        None,
                        Some(b"".as_slice()),
                    ])),
                ),
            ]],
        )?,
        table("union", vec![unions()?])?,
        table(
            "run-end",
            vec![vec![(
                "ree",
                arc(RunArray::<Int32Type>::try_new(
                    &Int32Array::from(vec![2, 3, 6]),
                    &StringArray::from(vec![Some("a"), None, Some("b")]),
                )?),
            )]],
        )?,
        table("map", vec![vec![("m", map()?)]])?,
        table(
            "null",
            vec![vec![
                ("n", arc(NullArray::new(3))),
                ("i", arc(Int8Array::from(vec![Some(1), None, Some(-1)]))),
            ]],
        )?,
        table("lists", vec![lists()?])?,
        table("nested-dictionary", vec![nested_dictionary()?])?,
        table(
            "decimals",
            vec![vec![
                (
                    "d32",
                    arc(Decimal32Array::from(vec![123, -45]).with_precision_and_scale(5, 2)?),
                ),
                (
                    "d64",
                    arc(Decimal64Array::from(vec![123_456, 0]).with_precision_and_scale(12, 3)?),
                ),
                (
                    "d256",
                    arc(Decimal256Array::from(vec![i256::from_i128(-7), i256::MAX])
                        .with_precision_and_scale(76, 5)?),
                ),
            ]],
        )?,
        table("null-only", vec![vec![("n", arc(NullArray::new(2)))]])?,
        table(
            "empty",
            vec![vec![
                ("i", arc(Int32Array::from(Vec::<i32>::new()))),
                ("s", arc(StringArray::from(Vec::<&str>::new()))),
            ]],
        )?,
        table(
            "unsigned-dictionary",
            vec![vec![(
                "u",
                arc(DictionaryArray::<UInt16Type>::try_new(
                    UInt16Array::from(vec![1, 1, 0]),
                    arc(Int16Array::from(vec![-5, 7])),
                )?),
            )]],
        )?,
    ];
    // Schema and field metadata travel in the schema message.
    if let Some(first) = t.first_mut() {
        let fields: Vec<Field> = first
            .schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_metadata(HashMap::from([("unit".into(), "m".into())]))
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            HashMap::from([("origin".into(), "seed".into())]),
        ));
        let batches = first
            .batches
            .iter()
            .map(|b| b.clone().with_schema(schema.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        first.schema = schema;
        first.batches = batches;
    }
    Ok(t)
}

fn nested() -> Result<Vec<(&'static str, ArrayRef)>, ArrowError> {
    let list = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Int32, true)),
        OffsetBuffer::new(ScalarBuffer::from(vec![0, 2, 2, 3])),
        arc(Int32Array::from(vec![Some(1), None, Some(3)])),
        Some(vec![true, false, true].into()),
    )?;
    let st = StructArray::try_new(
        Fields::from(vec![
            Field::new("a", DataType::Int8, true),
            Field::new("b", DataType::Binary, true),
        ]),
        vec![
            arc(Int8Array::from(vec![1, 2, 3])),
            arc(BinaryArray::from(vec![
                Some(b"x".as_slice()),
                None,
                Some(b"zz".as_slice()),
            ])),
        ],
        Some(vec![true, true, false].into()),
    )?;
    Ok(vec![("l", arc(list)), ("st", arc(st))])
}

fn unions() -> Result<Vec<(&'static str, ArrayRef)>, ArrowError> {
    let dense_fields = UnionFields::try_new(
        [0, 5],
        [
            Field::new("i", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ],
    )?;
    let dense = UnionArray::try_new(
        dense_fields,
        ScalarBuffer::from(vec![0i8, 5, 0]),
        Some(ScalarBuffer::from(vec![0i32, 0, 1])),
        vec![
            arc(Int32Array::from(vec![Some(7), None])),
            arc(StringArray::from(vec!["u"])),
        ],
    )?;
    let sparse_fields = UnionFields::try_new(
        [1, 2],
        [
            Field::new("i", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
        ],
    )?;
    let sparse = UnionArray::try_new(
        sparse_fields,
        ScalarBuffer::from(vec![1i8, 2, 2]),
        None,
        vec![
            arc(Int32Array::from(vec![1, 2, 3])),
            arc(Float64Array::from(vec![0.5, 1.5, 2.5])),
        ],
    )?;
    Ok(vec![("dense", arc(dense)), ("sparse", arc(sparse))])
}

fn map() -> Result<ArrayRef, ArrowError> {
    let names = MapFieldNames {
        entry: "pairs".into(),
        key: "k".into(),
        value: "v".into(),
    };
    let mut b = MapBuilder::new(Some(names), StringBuilder::new(), Int64Builder::new());
    b.keys().append_value("a");
    b.values().append_value(1);
    b.keys().append_value("b");
    b.values().append_null();
    b.append(true)?;
    b.append(false)?;
    b.keys().append_value("c");
    b.values().append_value(3);
    b.append(true)?;
    Ok(Arc::new(b.finish()))
}

fn lists() -> Result<Vec<(&'static str, ArrayRef)>, ArrowError> {
    let fsl = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        2,
        arc(Float32Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        None,
    )?;
    let large = LargeListArray::try_new(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        OffsetBuffer::new(ScalarBuffer::from(vec![0i64, 1, 1, 3])),
        arc(StringArray::from(vec!["a", "b", "c"])),
        None,
    )?;
    let view = ListViewArray::try_new(
        Arc::new(Field::new("item", DataType::Int16, true)),
        ScalarBuffer::from(vec![2i32, 0, 1]),
        ScalarBuffer::from(vec![1i32, 2, 0]),
        arc(Int16Array::from(vec![10, 20, 30])),
        None,
    )?;
    Ok(vec![
        ("fsl", arc(fsl)),
        ("large", arc(large)),
        ("view", arc(view)),
    ])
}

fn nested_dictionary() -> Result<Vec<(&'static str, ArrayRef)>, ArrowError> {
    let values = DictionaryArray::<Int8Type>::try_new(
        Int8Array::from(vec![Some(1), Some(0), None, Some(1)]),
        arc(StringArray::from(vec!["lo", "hi"])),
    )?;
    let list = ListArray::try_new(
        Arc::new(Field::new("item", values.data_type().clone(), true)),
        OffsetBuffer::new(ScalarBuffer::from(vec![0, 1, 4, 4])),
        arc(values),
        None,
    )?;
    Ok(vec![("ld", arc(list))])
}

/// The sample schemas and their schema messages, as a client would send them.
pub fn schema_messages() -> &'static [(SchemaRef, FlightData)] {
    static MESSAGES: OnceLock<Vec<(SchemaRef, FlightData)>> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        tables()
            .unwrap_or_else(|e| panic!("sample tables: {e}"))
            .into_iter()
            .map(|t| {
                let message: FlightData = SchemaAsIpc::new(&t.schema, &options).into();
                (t.schema, message)
            })
            .collect()
    })
}
