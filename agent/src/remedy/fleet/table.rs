//! The budget's DynamoDB table: one item per group (`group`, `version`, `state` = the
//! [`Ledger`] as JSON), read with strongly consistent reads and written with a conditional
//! PutItem on `version`, which DynamoDB applies atomically per item. The table is created by
//! `bindsto fleet init`; the agent needs only GetItem and PutItem.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};

use super::ledger::Ledger;
use crate::config::Remediate;
use crate::remedy::steps::aws::sdk_config;

/// Compare-and-set attempts for one change before it is reported as contended.
const CAS_ATTEMPTS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("dynamodb:{call} on table {table}: {message}")]
    Call {
        call: &'static str,
        table: String,
        message: String,
    },
    #[error("table {table}, group {group}: malformed item: {what}")]
    Malformed {
        table: String,
        group: String,
        what: String,
    },
    #[error(
        "table {table}, group {group}: still contended after {CAS_ATTEMPTS} conditional writes"
    )]
    Contended { table: String, group: String },
}

/// The item as read: its ledger and version (`None`: no item yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    pub ledger: Ledger,
    pub version: Option<u64>,
}

pub struct Table {
    client: aws_sdk_dynamodb::Client,
    name: String,
}

impl Table {
    pub async fn new(rem: &Remediate, region: &str) -> Table {
        let f = &rem.fleet;
        let sdk = sdk_config(rem, region, f.timeout).await;
        let mut conf = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(url) = &f.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        Table {
            client: aws_sdk_dynamodb::Client::from_conf(conf.build()),
            name: f.table.clone(),
        }
    }

    fn call_error(&self, call: &'static str, e: impl std::error::Error) -> TableError {
        TableError::Call {
            call,
            table: self.name.clone(),
            message: DisplayErrorContext(e).to_string(),
        }
    }

    fn malformed(&self, group: &str, what: impl Into<String>) -> TableError {
        TableError::Malformed {
            table: self.name.clone(),
            group: group.to_owned(),
            what: what.into(),
        }
    }

    /// The group's item, strongly consistent.
    pub async fn read(&self, group: &str) -> Result<Item, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .key("group", AttributeValue::S(group.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.call_error("GetItem", e))?;
        match out.item() {
            None => Ok(Item::default()),
            Some(item) => self.decode(group, item),
        }
    }

    fn decode(
        &self,
        group: &str,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Item, TableError> {
        let version = match item.get("version") {
            Some(AttributeValue::N(n)) => n
                .parse::<u64>()
                .map_err(|_| self.malformed(group, format!("version {n:?} is not a count")))?,
            other => {
                return Err(self.malformed(group, format!("version is {other:?}, not a number")));
            }
        };
        let ledger = match item.get("state") {
            Some(AttributeValue::S(s)) => {
                serde_json::from_str(s).map_err(|e| self.malformed(group, format!("state: {e}")))?
            }
            other => return Err(self.malformed(group, format!("state is {other:?}, not a string"))),
        };
        Ok(Item {
            ledger,
            version: Some(version),
        })
    }

    /// Writes `ledger` as the next version of `seen`; `false` when another host wrote first.
    pub async fn write(
        &self,
        group: &str,
        seen: &Item,
        ledger: &Ledger,
    ) -> Result<bool, TableError> {
        let state =
            serde_json::to_string(ledger).map_err(|e| self.malformed(group, e.to_string()))?;
        let next = seen.version.map_or(1, |v| v + 1);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.name)
            .item("group", AttributeValue::S(group.to_owned()))
            .item("version", AttributeValue::N(next.to_string()))
            .item("state", AttributeValue::S(state));
        put = match seen.version {
            None => put
                .condition_expression("attribute_not_exists(#g)")
                .expression_attribute_names("#g", "group"),
            Some(v) => put
                .condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let lost = e
                    .as_service_error()
                    .is_some_and(aws_sdk_dynamodb::operation::put_item::PutItemError::is_conditional_check_failed_exception);
                if lost {
                    Ok(false)
                } else {
                    Err(self.call_error("PutItem", e))
                }
            }
        }
    }

    /// Applies `change` to the group's item until its conditional write wins. `change` sees
    /// the item as read and returns its answer and, if the item must change, the new ledger.
    pub async fn update<T>(
        &self,
        group: &str,
        mut change: impl FnMut(&Item) -> (T, Option<Ledger>),
    ) -> Result<(T, Item), TableError> {
        for _ in 0..CAS_ATTEMPTS {
            let seen = self.read(group).await?;
            let (answer, next) = change(&seen);
            let Some(ledger) = next else {
                return Ok((answer, seen));
            };
            if self.write(group, &seen, &ledger).await? {
                let version = Some(seen.version.map_or(1, |v| v + 1));
                return Ok((answer, Item { ledger, version }));
            }
            // Another host won this version: read again after a short random pause.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(10..=100))).await;
        }
        Err(TableError::Contended {
            table: self.name.clone(),
            group: group.to_owned(),
        })
    }

    /// `bindsto fleet init`: creates the table (key `group`, on-demand billing) if it does not
    /// exist and waits until it is active. Returns whether it was created now.
    pub async fn create(&self, wait: Duration) -> Result<bool, TableError> {
        let attr = AttributeDefinition::builder()
            .attribute_name("group")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| self.call_error("CreateTable", e))?;
        let key = KeySchemaElement::builder()
            .attribute_name("group")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| self.call_error("CreateTable", e))?;
        let created = match self
            .client
            .create_table()
            .table_name(&self.name)
            .attribute_definitions(attr)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.as_service_error().is_some_and(aws_sdk_dynamodb::operation::create_table::CreateTableError::is_resource_in_use_exception) => false,
            Err(e) => return Err(self.call_error("CreateTable", e)),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.name)
                .send()
                .await
                .map_err(|e| self.call_error("DescribeTable", e))?;
            let status = out.table().and_then(|t| t.table_status());
            if status == Some(&TableStatus::Active) {
                return Ok(created);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(TableError::Call {
                    call: "DescribeTable",
                    table: self.name.clone(),
                    message: format!("not ACTIVE after {wait:?} (status {status:?})"),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
