//! A rehearsal as JUnit XML, the report format CI systems display (GitHub
//! Actions through a reporter action, GitLab's `artifacts:reports:junit`,
//! Jenkins): `testsuites` > `testsuite` > `testcase`, a `failure` element in
//! a failed case, times in seconds.

use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

/// One step of the rehearsal as a test case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub seconds: f64,
    /// The failure message (short) and its details, when it failed.
    pub failure: Option<(String, String)>,
    /// Not run, e.g. `--run` after a failed restore.
    pub skipped: Option<String>,
}

/// The document for one suite of cases.
pub fn write(suite: &str, timestamp: &str, seconds: f64, cases: &[Case]) -> io::Result<String> {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
    let tests = cases.len().to_string();
    let failures = failures.to_string();
    let skipped = skipped.to_string();
    let time = format!("{seconds:.3}");
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    writer
        .create_element("testsuites")
        .with_attribute(("name", "tusk rehearse"))
        .with_attribute(("tests", tests.as_str()))
        .with_attribute(("failures", failures.as_str()))
        .with_attribute(("errors", "0"))
        .with_attribute(("skipped", skipped.as_str()))
        .with_attribute(("time", time.as_str()))
        .write_inner_content(|writer| {
            writer
                .create_element("testsuite")
                .with_attribute(("name", suite))
                .with_attribute(("tests", tests.as_str()))
                .with_attribute(("failures", failures.as_str()))
                .with_attribute(("errors", "0"))
                .with_attribute(("skipped", skipped.as_str()))
                .with_attribute(("time", time.as_str()))
                .with_attribute(("timestamp", timestamp))
                .write_inner_content(|writer| {
                    for case in cases {
                        write_case(writer, suite, case)?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut text = String::from_utf8(writer.into_inner()).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text)
}

fn write_case(writer: &mut Writer<Vec<u8>>, suite: &str, case: &Case) -> io::Result<()> {
    let time = format!("{:.3}", case.seconds);
    let element = writer
        .create_element("testcase")
        .with_attribute(("classname", suite))
        .with_attribute(("name", case.name.as_str()))
        .with_attribute(("time", time.as_str()));
    match (&case.failure, &case.skipped) {
        (Some((message, details)), _) => {
            element.write_inner_content(|writer| {
                writer
                    .create_element("failure")
                    .with_attribute(("message", message.as_str()))
                    .with_attribute(("type", "failure"))
                    .write_text_content(BytesText::new(details))?;
                Ok(())
            })?;
        }
        (None, Some(reason)) => {
            element.write_inner_content(|writer| {
                writer
                    .create_element("skipped")
                    .with_attribute(("message", reason.as_str()))
                    .write_empty()?;
                Ok(())
            })?;
        }
        (None, None) => {
            element.write_empty()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_suites_cases_failures_and_escapes() {
        let cases = [
            Case {
                name: "restore".into(),
                seconds: 1.5,
                failure: None,
                skipped: None,
            },
            Case {
                name: "content".into(),
                seconds: 0.25,
                failure: Some((
                    "1 difference".into(),
                    "row_count accounts: 3 <> 2 & more".into(),
                )),
                skipped: None,
            },
            Case {
                name: "run".into(),
                seconds: 0.0,
                failure: None,
                skipped: Some("the restore failed".into()),
            },
        ];
        let xml = write(
            "rehearse m-20261207T010203Z",
            "2026-12-07T01:02:03Z",
            2.0,
            &cases,
        )
        .unwrap();
        assert!(
            xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{xml}"
        );
        assert!(xml.contains(
            "<testsuites name=\"tusk rehearse\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"2.000\">"
        ), "{xml}");
        assert!(xml.contains("<testcase classname=\"rehearse m-20261207T010203Z\" name=\"restore\" time=\"1.500\"/>"), "{xml}");
        assert!(xml.contains("<failure message=\"1 difference\" type=\"failure\">row_count accounts: 3 &lt;&gt; 2 &amp; more</failure>"), "{xml}");
        assert!(
            xml.contains("<skipped message=\"the restore failed\"/>"),
            "{xml}"
        );
    }
}
