//! SQL over a table that holds compacted batches: each partition decodes
//! its batches as the query reads them, only the columns the query uses,
//! so a query holds a few decoded batches at a time rather than the table,
//! and its partitions decode in parallel. Batches a query's bounds on
//! `time_` leave out are not decoded at all.

use std::sync::Arc;

use arrow_schema::SchemaRef;
use datafusion::{
    catalog::{Session, TableProvider},
    common::ScalarValue,
    error::DataFusionError,
    execution::TaskContext,
    logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType},
    physical_plan::{
        ExecutionPlan, SendableRecordBatchStream,
        stream::RecordBatchStreamAdapter,
        streaming::{PartitionStream, StreamingTableExec},
    },
};
use futures::StreamExt;
use probe_store::{ScanPart, TIME_COLUMN, TableScan};

/// A [`TableScan`] as a DataFusion table, read lazily.
#[derive(Debug)]
pub(crate) struct ScanTable {
    schema: SchemaRef,
    parts: Vec<ScanPart>,
    partitions: usize,
}

impl ScanTable {
    /// The scan's parts spread over `partitions` (at least one).
    pub(crate) fn new(scan: TableScan, partitions: usize) -> Self {
        Self {
            schema: scan.info.schema,
            parts: scan.parts,
            partitions: partitions.max(1),
        }
    }
}

#[tonic::async_trait]
impl TableProvider for ScanTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Bounds on `time_` are used to skip batches, and still applied to
    /// the rows of the batches read.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        Ok(filters
            .iter()
            .map(|filter| {
                if TimeBounds::of(filter).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let bounds = filters
            .iter()
            .filter_map(TimeBounds::of)
            .fold(TimeBounds::ALL, TimeBounds::and);
        let schema = match projection {
            Some(indices) => Arc::new(self.schema.project(indices)?),
            None => Arc::clone(&self.schema),
        };
        let projection: Option<Arc<[usize]>> = projection.map(|p| p.as_slice().into());
        let count = self.partitions.min(self.parts.len()).max(1);
        let mut split: Vec<Vec<ScanPart>> = vec![Vec::new(); count];
        let wanted = self.parts.iter().filter(|part| bounds.may_hold(part));
        for (i, part) in wanted.enumerate() {
            split[i % count].push(part.clone());
        }
        let partitions = split
            .into_iter()
            .map(|parts| {
                Arc::new(PartsStream {
                    schema: Arc::clone(&schema),
                    projection: projection.clone(),
                    parts,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        // The partitions already produce the projected columns.
        let exec = StreamingTableExec::try_new(schema, partitions, None, [], false, limit)?;
        Ok(Arc::new(exec))
    }
}

/// One partition: its parts, loaded one at a time as it is polled.
#[derive(Debug)]
struct PartsStream {
    schema: SchemaRef,
    projection: Option<Arc<[usize]>>,
    parts: Vec<ScanPart>,
}

impl PartitionStream for PartsStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let projection = self.projection.clone();
        let batches = futures::stream::iter(self.parts.clone()).filter_map(move |part| {
            let loaded = part.load(projection.as_deref());
            futures::future::ready(loaded.map_err(DataFusionError::from).transpose())
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

/// The `time_` values a query's filters allow, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimeBounds {
    min: i64,
    max: i64,
}

impl TimeBounds {
    const ALL: Self = Self {
        min: i64::MIN,
        max: i64::MAX,
    };

    /// The bounds one conjunct of a query's filter sets on `time_`, if it
    /// compares `time_` with a constant (what `now() - INTERVAL ...` and
    /// time strings become once the planner folded them).
    fn of(filter: &Expr) -> Option<Self> {
        match filter {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, value) = match (is_time(left), is_time(right)) {
                    (true, false) => (*op, nanos(right)?),
                    (false, true) => (op.swap()?, nanos(left)?),
                    _ => return None,
                };
                // `>` and `<` are kept inclusive: a bound may only widen.
                match op {
                    Operator::Gt | Operator::GtEq => Some(Self {
                        min: value,
                        ..Self::ALL
                    }),
                    Operator::Lt | Operator::LtEq => Some(Self {
                        max: value,
                        ..Self::ALL
                    }),
                    Operator::Eq => Some(Self {
                        min: value,
                        max: value,
                    }),
                    _ => None,
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_time(expr) => Some(Self {
                min: nanos(low)?,
                max: nanos(high)?,
            }),
            _ => None,
        }
    }

    fn and(self, other: Self) -> Self {
        Self {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
        }
    }

    /// Whether `part` may hold rows within the bounds (yes when its time
    /// range is unknown).
    fn may_hold(&self, part: &ScanPart) -> bool {
        part.time_range()
            .is_none_or(|(oldest, newest)| newest >= self.min && oldest <= self.max)
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(column) if column.name == TIME_COLUMN)
}

/// A timestamp constant in nanoseconds.
fn nanos(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn at(ns: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(ns),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn comparisons_of_time_with_a_constant_bound_the_batches_read() {
        let time = || col(TIME_COLUMN);
        let bound = |e: Expr| TimeBounds::of(&e);
        assert_eq!(bound(time().gt_eq(at(5))).map(|b| b.min), Some(5));
        assert_eq!(bound(time().gt(at(5))).map(|b| b.min), Some(5));
        assert_eq!(bound(at(9).gt(time())).map(|b| b.max), Some(9));
        assert_eq!(
            bound(time().lt(at(9))).map(|b| (b.min, b.max)),
            Some((i64::MIN, 9))
        );
        assert_eq!(
            bound(time().between(at(3), at(4))),
            Some(TimeBounds { min: 3, max: 4 })
        );
        assert_eq!(
            bound(lit(ScalarValue::TimestampMillisecond(Some(2), None)).lt_eq(time()))
                .map(|b| b.min),
            Some(2_000_000)
        );
        // Anything else is left to the query alone.
        assert_eq!(bound(time().not_eq(at(5))), None);
        assert_eq!(bound(col("pid").gt(lit(5u32))), None);
        assert_eq!(bound(time().not_between(at(3), at(4))), None);
        assert_eq!(bound(time().gt(col("other"))), None);

        let both = TimeBounds::ALL
            .and(TimeBounds {
                min: 10,
                ..TimeBounds::ALL
            })
            .and(TimeBounds {
                max: 20,
                ..TimeBounds::ALL
            });
        let part = |range| {
            ScanPart::ready(
                arrow_array::RecordBatch::new_empty(Arc::new(arrow_schema::Schema::empty())),
                range,
            )
        };
        assert!(both.may_hold(&part(Some((15, 30)))));
        assert!(both.may_hold(&part(Some((0, 10)))));
        assert!(!both.may_hold(&part(Some((21, 30)))));
        assert!(!both.may_hold(&part(Some((0, 9)))));
        assert!(both.may_hold(&part(None)));
    }
}
