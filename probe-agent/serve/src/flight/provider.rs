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
    logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType},
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

    /// Bounds on `time_` skip batches; every filter still runs on the
    /// rows of the batches read.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let range = time_range(filters);
        let schema = match projection {
            Some(indices) => Arc::new(self.schema.project(indices)?),
            None => Arc::clone(&self.schema),
        };
        let projection: Option<Arc<[usize]>> = projection.map(|p| p.as_slice().into());
        let count = self.partitions.min(self.parts.len()).max(1);
        let mut split: Vec<Vec<ScanPart>> = vec![Vec::new(); count];
        let wanted = self.parts.iter().filter(|part| may_hold(part, range));
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

/// The `[since, until)` range on `time_` that `filters` (a conjunction)
/// imply, from comparisons of `time_` with literals.
pub fn time_range(filters: &[Expr]) -> (Option<i64>, Option<i64>) {
    let mut since: Option<i64> = None;
    let mut until: Option<i64> = None;
    let mut lower = |v: i64| since = Some(since.map_or(v, |s| s.max(v)));
    let mut upper = |v: i64| until = Some(until.map_or(v, |u| u.min(v)));
    let mut pending: Vec<&Expr> = filters.iter().collect();
    while let Some(filter) = pending.pop() {
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                pending.push(left);
                pending.push(right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, value) = match (time_column(left), nanos(right)) {
                    (true, Some(v)) => (*op, v),
                    _ => match (nanos(left), time_column(right)) {
                        (Some(v), true) => match op.swap() {
                            Some(op) => (op, v),
                            None => continue,
                        },
                        _ => continue,
                    },
                };
                match op {
                    Operator::GtEq => lower(value),
                    Operator::Gt => lower(value.saturating_add(1)),
                    Operator::Lt => upper(value),
                    Operator::LtEq => upper(value.saturating_add(1)),
                    Operator::Eq => {
                        lower(value);
                        upper(value.saturating_add(1));
                    }
                    _ => {}
                }
            }
            Expr::Between(between) if !between.negated && time_column(&between.expr) => {
                if let (Some(low), Some(high)) = (nanos(&between.low), nanos(&between.high)) {
                    lower(low);
                    upper(high.saturating_add(1));
                }
            }
            _ => {}
        }
    }
    (since, until)
}

fn time_column(expr: &Expr) -> bool {
    match expr {
        Expr::Column(c) => c.name == TIME_COLUMN,
        _ => false,
    }
}

fn nanos(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::TimestampNanosecond(v, _) | ScalarValue::Int64(v) => *v,
            ScalarValue::TimestampMicrosecond(v, _) => v.and_then(|v| v.checked_mul(1_000)),
            ScalarValue::TimestampMillisecond(v, _) => v.and_then(|v| v.checked_mul(1_000_000)),
            ScalarValue::TimestampSecond(v, _) => v.and_then(|v| v.checked_mul(1_000_000_000)),
            _ => None,
        },
        Expr::Cast(cast) => nanos(&cast.expr),
        Expr::TryCast(cast) => nanos(&cast.expr),
        _ => None,
    }
}

/// Whether `part` may hold rows in `[since, until)` (yes when its time
/// range is unknown).
pub(crate) fn may_hold(part: &ScanPart, (since, until): (Option<i64>, Option<i64>)) -> bool {
    part.time_range().is_none_or(|(oldest, newest)| {
        since.is_none_or(|since| newest >= since) && until.is_none_or(|until| oldest < until)
    })
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn ts(n: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(n),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_range_from_comparisons() {
        let filters = vec![
            col("time_").gt_eq(ts(100)).and(col("time_").lt(ts(200))),
            col("pod").eq(lit("web-0")),
        ];
        assert_eq!(time_range(&filters), (Some(100), Some(200)));
        let filters = vec![ts(150).lt(col("time_")), col("time_").lt_eq(ts(180))];
        assert_eq!(time_range(&filters), (Some(151), Some(181)));
        assert_eq!(time_range(&[col("pid").gt(lit(3))]), (None, None));
        // `OR` says nothing a scan may rely on.
        let either = col("time_").gt(ts(1)).or(col("time_").lt(ts(0)));
        assert_eq!(time_range(&[either]), (None, None));

        let time = || col(TIME_COLUMN);
        let range = |e: Expr| time_range(&[e]);
        assert_eq!(range(time().gt_eq(ts(5))), (Some(5), None));
        assert_eq!(range(time().gt(ts(5))), (Some(6), None));
        assert_eq!(range(ts(9).gt(time())), (None, Some(9)));
        assert_eq!(range(time().lt(ts(9))), (None, Some(9)));
        assert_eq!(range(time().between(ts(3), ts(4))), (Some(3), Some(5)));
        assert_eq!(
            range(lit(ScalarValue::TimestampMillisecond(Some(2), None)).lt_eq(time())),
            (Some(2_000_000), None)
        );
        // Anything else is left to the query alone.
        assert_eq!(range(time().not_eq(ts(5))), (None, None));
        assert_eq!(range(time().not_between(ts(3), ts(4))), (None, None));
        assert_eq!(range(time().gt(col("other"))), (None, None));
    }

    #[test]
    fn batches_outside_the_time_range_are_skipped() {
        let part = |range| {
            let empty = Arc::new(arrow_schema::Schema::empty());
            ScanPart::ready(arrow_array::RecordBatch::new_empty(empty), range)
        };
        // time_ in [10, 21).
        let both = (Some(10), Some(21));
        assert!(may_hold(&part(Some((15, 30))), both));
        assert!(may_hold(&part(Some((0, 10))), both));
        assert!(!may_hold(&part(Some((21, 30))), both));
        assert!(!may_hold(&part(Some((0, 9))), both));
        assert!(may_hold(&part(None), both));
        assert!(may_hold(&part(Some((0, 9))), (None, None)));
    }
}
